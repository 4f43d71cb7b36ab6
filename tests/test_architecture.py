"""The package's shape, checked statically: no import cycles, pure cores stay pure,
modules stay small (docs/architecture.md draws the allowed imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "securechat"

#: Modules that must do no I/O: bytes and time in, bytes and events out.
PURE_MODULES = ("securechat.protocol", "securechat.protocol.frames",
                "securechat.protocol.framing", "securechat.protocol.decode",
                "securechat.protocol.encode", "securechat.client.core", "securechat.client.parts",
                "securechat.client.sendqueue", "securechat.client.phases",
                "securechat.client.events", "securechat.client.backoff",
                "securechat.client.roster", "securechat.client.rooms",
                "securechat.client.view", "securechat.grants")
#: The client's state machine also never reads the clock: time comes in as ``now``.
CLOCKLESS_MODULES = ("securechat.client.core", "securechat.client.parts",
                     "securechat.client.sendqueue", "securechat.client.phases",
                     "securechat.client.events", "securechat.client.rooms",
                     "securechat.client.view")
#: What "no I/O" means here (design-notes: the sans-I/O layer never sees a socket).
IO_MODULES = frozenset({"socket", "ssl", "selectors", "threading", "asyncio"})
#: Which top-level packages each package may import (docs/architecture.md).
ALLOWED = {
    "protocol": {"errors"},
    "errors": set(),
    "devcerts": {"errors"},
    "grants": {"protocol"},
    "io": {"errors"},
    "store": {"protocol", "errors"},
    "rooms": {"protocol", "errors", "store"},
    "server": {"protocol", "errors", "io", "rooms", "store", "grants"},
    "client": {"protocol", "errors", "io"},
    "cli": {"__init__", "protocol", "errors", "io", "server", "client", "devcerts", "rooms",
            "store", "grants"},
    "__init__": {"client", "protocol", "errors"},
}
#: metering.py is a leaf like errors.py: plain counters any layer keeps for /metrics.
ALLOWED["metering"] = set()
for _layer in ("io", "store", "rooms", "server", "cli"):
    ALLOWED[_layer].add("metering")
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: frozenset[str] = frozenset()) -> set[str]:
    """Every module ``name`` imports, TYPE_CHECKING blocks and function bodies included:
    a cycle hidden behind a lazy import is still a cycle in the design."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            # ``from . import protocol`` imports the module, not the package's own code
            # (beyond what every submodule import implies); ``from . import X`` with an
            # attribute X does depend on the package.
            submodules = {f"{stem}.{alias.name}" for alias in node.names}
            found.update(submodules & known)
            if submodules - known:
                found.add(stem)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = frozenset(modules)
    return {name: {m for m in _imports(name, path, known) if m in modules and m != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_imports_one_that_imports_it_back() -> None:
    """No import cycle, direct or through other modules, lazy imports included."""
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a two-module and a three-module cycle are both reported."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": set()}
    assert _cycles(graph) == [["a", "b"], ["c", "d", "e"]]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_sans_io_modules_import_no_io(module: str) -> None:
    """The protocol and the client state machine never touch sockets or threads."""
    path = _modules()[module]
    imported = {name.split(".")[0] for name in _imports(module, path, frozenset(_modules()))}
    assert not imported & IO_MODULES, f"{module} imports {sorted(imported & IO_MODULES)}"


@pytest.mark.parametrize("module", CLOCKLESS_MODULES)
def test_the_client_core_reads_no_clock(module: str) -> None:
    """The core is driven by the ``now`` it is given, so tests control time exactly."""
    path = _modules()[module]
    imported = {name.split(".")[0] for name in _imports(module, path, frozenset(_modules()))}
    assert "time" not in imported


def test_packages_import_only_what_the_architecture_allows() -> None:
    """The layer diagram in docs/architecture.md, enforced."""
    wrong = []
    for module, targets in _graph().items():
        package = _package_of(module)
        for target in targets:
            other = _package_of(target)
            if other != package and other not in ALLOWED.get(package, set()):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_module_is_over_the_size_limit() -> None:
    """Small modules, one responsibility each."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
