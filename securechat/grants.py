"""Which rooms a token may enter, and whether it may send there (pure, no I/O).

A grant is a glob pattern over room names (``*`` any run of characters, ``?`` one)
with a mode: ``rw`` (read and send) or ``ro`` (read only). Where several patterns
match a room the widest mode wins, so ``{"*": "ro", "ops": "rw"}`` reads everything
and sends in ``ops`` only. Patterns are compiled once per tokens-file load, so a
check is one regex match per grant, never a scan of rooms or sessions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final, Literal, cast

from .protocol import MAX_ROOM_LENGTH

__all__ = ["MODES", "Grants", "Mode", "parse_patterns", "pattern_problem"]

Mode = Literal["rw", "ro"]
MODES: Final = ("rw", "ro")
#: The room-name alphabet plus the two wildcards.
_PATTERN: Final = re.compile(r"[a-z0-9*?][a-z0-9_.*?-]{0,63}")
#: The most grants one token may hold (each costs a regex match at join).
MAX_GRANTS: Final = 256


def pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` cannot be a grant pattern, or None."""
    if not isinstance(pattern, str) or not pattern:
        return "a room pattern must be a non-empty string"
    if len(pattern) > MAX_ROOM_LENGTH:
        return f"room pattern {pattern!r} is longer than {MAX_ROOM_LENGTH} characters"
    if not _PATTERN.fullmatch(pattern):
        if pattern.isascii() and _PATTERN.fullmatch(pattern.lower()):
            return f"room pattern {pattern!r}: room names are lower case"
        return (f"room pattern {pattern!r}: use lower-case letters, digits, '-', '_', '.' "
                "and the wildcards '*' and '?', starting with a letter, digit or wildcard")
    return None


def parse_patterns(text: str) -> list[str]:
    """``"general, ops,team-*"`` -> the patterns, each checked (ValueError says why).
    A leading ``#`` is dropped, as people write room names that way."""
    patterns = []
    for part in text.split(","):
        pattern = part.strip().removeprefix("#")
        if not pattern:
            continue
        if (problem := pattern_problem(pattern)) is not None:
            raise ValueError(problem)
        if pattern not in patterns:
            patterns.append(pattern)
    if not patterns:
        raise ValueError("no room pattern given")
    return patterns


def _segment(text: str) -> str:
    # Only [a-z0-9_.-] and ``?`` occur between stars: escape the rest, translate ``?``.
    return "".join("." if c == "?" else re.escape(c) for c in text)


def _compile(pattern: str) -> re.Pattern[str]:
    """A regex for ``fullmatch``, linear in the room name's length.

    A naive translation (``*`` -> ``.*``) backtracks combinatorially: ``*a*a*a*a*a*a*b``
    against 63 ``a`` took 2 s, and the room name is the client's choice. Each segment
    between two stars matches at its leftmost place inside an atomic group (the
    leftmost place leaves the most room for the rest, so nothing is lost), as
    :func:`fnmatch.translate` does; only the last segment is tried back from the end.
    """
    first, *middle, last = pattern.split("*") if "*" in pattern else (pattern, None)
    if last is None:
        return re.compile(_segment(first), re.DOTALL)
    body = "".join(f"(?>.*?{_segment(m)})" for m in middle if m)
    return re.compile(f"{_segment(first)}{body}.*{_segment(last)}", re.DOTALL)


class Grants:
    """An immutable set of (pattern, mode) grants; safe to share between threads."""

    __slots__ = ("_exact", "_globs", "items")

    def __init__(self, grants: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        """Modes are checked here (ValueError), so any str mapping is accepted."""
        pairs = list(grants.items() if isinstance(grants, Mapping) else grants)
        merged: dict[str, Mode] = {}
        for pattern, mode in pairs:
            if (problem := pattern_problem(pattern)) is not None:
                raise ValueError(problem)
            if mode not in MODES:
                raise ValueError(f"grant mode for {pattern!r} must be 'rw' or 'ro'")
            if merged.get(pattern) != "rw":
                merged[pattern] = cast(Mode, mode)
        if len(merged) > MAX_GRANTS:
            raise ValueError(f"more than {MAX_GRANTS} room grants")
        #: Sorted (pattern, mode) pairs: the wire and file form.
        self.items: tuple[tuple[str, Mode], ...] = tuple(sorted(merged.items()))
        self._exact = {p: m for p, m in merged.items() if "*" not in p and "?" not in p}
        self._globs = [(_compile(p), m) for p, m in merged.items() if p not in self._exact]

    def mode(self, room: str) -> Mode | None:
        """``rw``, ``ro``, or None when no grant matches ``room``."""
        best = self._exact.get(room)
        if best == "rw":
            return best
        for regex, mode in self._globs:
            if regex.fullmatch(room):
                if mode == "rw":
                    return mode
                best = mode
        return best

    def may_read(self, room: str) -> bool:
        return self.mode(room) is not None

    def may_send(self, room: str) -> bool:
        return self.mode(room) == "rw"

    def literal_rooms(self) -> list[str]:
        """The rooms named without a wildcard (a bot that listens to "every room it may
        enter" joins these)."""
        return sorted(self._exact)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Grants) and other.items == self.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __repr__(self) -> str:
        return f"Grants({dict(self.items)!r})"
