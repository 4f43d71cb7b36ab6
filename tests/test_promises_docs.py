"""README's limits table and the defaults quoted in README.md and docs/protocol.md agree
with ``securechat.server.config.ServerConfig``, which ``--help`` is built from: the numbers
cannot drift apart unnoticed (config.py promises exactly that)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from securechat import protocol
from securechat.cli.server import build_parser, config_from_args
from securechat.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
#: protocol.md with its line breaks undone, for phrases that wrap.
PROTOCOL_FLAT = " ".join(PROTOCOL.split())
DEFAULTS = ServerConfig()
DOCS = ServerConfig.option_docs()
FIELDS = {f.name for f in dataclasses.fields(ServerConfig)}

#: Fields that are settings, not limits, so they have no row in the limits table.
#: A new field must go into the table or here: the test below fails until it does.
SETTINGS = {"host", "port", "cert", "key", "tokens", "room", "tls_min", "io_threads",
            "shutdown_timeout", "retry_spread", "tokens_poll", "log_level", "log_format",
            "store", "data_dir", "durability", "presence_ttl"}

UNITS = {"": 1, "s": 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024, "/s": 1}


def _field(option: str) -> str:
    return option.removeprefix("--").replace("-", "_")


def limits_table() -> dict[str, tuple[float, str, str]]:
    """README's limits table: field -> (default, unit, what happens beyond it)."""
    section = README.split("### Limits and their defaults", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    assert rows, "no limits table in README.md"
    table: dict[str, tuple[float, str, str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 3, row
        options = re.findall(r"`(--[a-z-]+)`", cells[0])
        # "50/s, burst 100" holds one value per option, in the same order.
        values = re.findall(r"(\d+(?:\.\d+)?)\s*(KiB|MiB|B|/s|s)?", cells[1])
        assert len(values) == len(options), row
        for option, (number, unit) in zip(options, values, strict=True):
            name = _field(option)
            assert name not in table, f"{option} has two rows"
            table[name] = (float(number) * UNITS[unit], unit, cells[2])
    return table


def test_limits_table_defaults_match_the_config() -> None:
    """Every value in README's limits table is the ServerConfig default."""
    for name, (value, _unit, _beyond) in limits_table().items():
        assert name in FIELDS, f"README's limits table names --{name}, which is no option"
        assert value == getattr(DEFAULTS, name), (
            f"README says --{name.replace('_', '-')} defaults to {value:g}, "
            f"ServerConfig says {getattr(DEFAULTS, name)}")


def test_every_limit_has_a_row_and_every_row_is_a_limit() -> None:
    """The table plus the declared settings cover every field, with no overlap."""
    table = set(limits_table())
    assert not table & SETTINGS, f"in the table and declared a setting: {table & SETTINGS}"
    missing = FIELDS - table - SETTINGS
    assert not missing, f"limits missing from README's table (or add to SETTINGS): {missing}"
    assert not SETTINGS - FIELDS, f"SETTINGS names no field: {SETTINGS - FIELDS}"


def test_limits_table_units_match_the_field_types() -> None:
    """Seconds are given for time settings, bytes for sizes, plain counts otherwise."""
    for name, (_value, unit, _beyond) in limits_table().items():
        default = getattr(DEFAULTS, name)
        if unit == "s":
            assert "seconds" in DOCS[name] or "deadline" in DOCS[name] or name.endswith(
                ("_timeout", "heartbeat")), name
            assert isinstance(default, float), name
        elif unit in ("B", "KiB", "MiB"):
            assert name.startswith("max_") and isinstance(default, int), name
        elif unit == "/s":
            assert name.endswith("_rate"), name


def test_limits_table_names_the_codes_the_option_help_names() -> None:
    """Codes --help names for a limit are in its table row; the row's codes exist."""
    for name, (_value, _unit, beyond) in limits_table().items():
        in_help = {code for code in protocol.ERROR_CODES if code in DOCS[name]}
        in_row = {code for code in protocol.ERROR_CODES if code in beyond}
        assert in_help <= in_row, f"--{name}: help names {in_help}, README row {in_row}"
        for code in re.findall(r"`error ([a-z_]+)`", beyond):
            assert code in protocol.ERROR_CODES, code
            assert f"| `{code}` |" in PROTOCOL, f"{code} is not in docs/protocol.md"


def test_pre_auth_frame_limit_matches() -> None:
    """README's "(4 KiB before authentication)" and protocol.md's 4 KiB are the code's."""
    assert "(4 KiB before authentication)" in README
    assert "Before authentication the limit is **4 KiB**" in PROTOCOL
    assert protocol.PRE_AUTH_MAX_FRAME == 4 * 1024
    assert "**64 KiB** by default (`--max-frame`)" in PROTOCOL
    assert DEFAULTS.max_frame == 64 * 1024 and protocol.DEFAULT_PORT == 7443
    assert "default port **7443**" in PROTOCOL


QUOTED = re.compile(r"`(--[a-z-]+)`(?: bytes)? \((\d+(?:\.\d+)?) ?(s|KiB|MiB)?\)")


@pytest.mark.parametrize("doc", ["README.md", "docs/protocol.md"])
def test_defaults_quoted_in_the_text_match(doc: str) -> None:
    """Every "`--option` (N unit)" in the prose gives the option's real default."""
    text = README if doc == "README.md" else PROTOCOL
    quoted = QUOTED.findall(text)
    assert quoted, f"no quoted defaults found in {doc}"
    for option, number, unit in quoted:
        name = _field(option)
        assert name in FIELDS, option
        assert float(number) * UNITS[unit or ""] == getattr(DEFAULTS, name), (
            f"{doc} quotes {option} ({number} {unit}); the default is "
            f"{getattr(DEFAULTS, name)}")


def test_resend_rules_are_documented_as_built() -> None:
    """protocol.md: resends are recognised per (user, client, id) only, for the window."""
    assert "by `(user, client, id)`, for `--resend-window` (300 s)" in PROTOCOL_FLAT
    assert "nothing is ever dropped as a duplicate" in PROTOCOL_FLAT
    assert DEFAULTS.resend_window == 300


def test_every_table_option_is_a_flag_and_an_environment_variable() -> None:
    """Every limit is a flag and a SECURECHAT_ variable, with its default in --help."""
    parser = build_parser()
    help_text = " ".join(parser.format_help().split())
    for name, (value, _unit, _beyond) in limits_table().items():
        option = "--" + name.replace("_", "-")
        env = "SECURECHAT_" + name.upper()
        assert option in help_text and env in help_text, name
        assert f"(default: {getattr(DEFAULTS, name)}; env {env})" in help_text, name
        kind = type(getattr(DEFAULTS, name))
        other = kind(value * 2 + 1)
        # The handshake deadline may not pass the auth deadline: make room for it.
        room = {} if name == "auth_timeout" else {"SECURECHAT_AUTH_TIMEOUT": "1000"}
        from_env = config_from_args(parser.parse_args([]), {**room, env: str(other)})
        from_flag = config_from_args(parser.parse_args([option, str(other)]), room)
        assert getattr(from_env, name) == getattr(from_flag, name) == other, name
