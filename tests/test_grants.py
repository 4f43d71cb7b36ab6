"""securechat.grants: mode resolution, widest wins, wildcards, invalid patterns, parsing."""

from __future__ import annotations

import fnmatch
import random
import time

import pytest

from securechat.grants import MAX_GRANTS, Grants, parse_patterns, pattern_problem


def test_exact_grant_modes() -> None:
    """An exact pattern grants its room only, with its mode; other rooms get None."""
    grants = Grants({"general": "rw", "ops": "ro"})
    assert grants.mode("general") == "rw"
    assert grants.mode("ops") == "ro"
    assert grants.mode("opsx") is None and grants.mode("gen") is None
    assert grants.may_send("general") and grants.may_read("general")
    assert grants.may_read("ops") and not grants.may_send("ops")
    assert not grants.may_read("random")


def test_widest_mode_wins() -> None:
    """Where an ro and an rw pattern both match, the room is rw, whichever is exact."""
    assert Grants({"*": "ro", "ops": "rw"}).mode("ops") == "rw"
    assert Grants({"*": "ro", "ops": "rw"}).mode("general") == "ro"
    assert Grants({"*": "rw", "ops": "ro"}).mode("ops") == "rw"
    assert Grants({"team-*": "ro", "team-?": "rw"}).mode("team-a") == "rw"
    assert Grants({"team-*": "ro", "team-?": "rw"}).mode("team-ab") == "ro"
    # The same pattern twice (iterable form): rw wins, in either order.
    assert Grants([("ops", "ro"), ("ops", "rw")]).items == (("ops", "rw"),)
    assert Grants([("ops", "rw"), ("ops", "ro")]).items == (("ops", "rw"),)


@pytest.mark.parametrize(("pattern", "room", "matches"), [
    ("*", "anything", True),
    ("team-*", "team-", True),
    ("team-*", "team-blue", True),
    ("team-*", "team", False),
    ("team-?", "team-a", True),
    ("team-?", "team-ab", False),
    ("*-ops", "eu-ops", True),
    ("*-ops", "eu-ops-2", False),
    ("a*b*c", "abc", True),
    ("a*b*c", "axxbyyc", True),
    ("a*b*c", "axxcyyb", False),
    ("v1.0", "v1x0", False),  # '.' is literal, not a regex wildcard
    ("a_b", "a_b", True),
])
def test_wildcards(pattern: str, room: str, matches: bool) -> None:
    """'*' is any run of characters (also none), '?' exactly one; the rest is literal."""
    assert (Grants({pattern: "ro"}).mode(room) == "ro") is matches


def test_wildcards_agree_with_fnmatch() -> None:
    """Random patterns over a small alphabet match exactly where fnmatchcase does."""
    rng = random.Random(20260101)
    for _ in range(3000):
        pattern = "".join(rng.choice("ab*?") for _ in range(rng.randint(1, 7)))
        room = "".join(rng.choice("ab") for _ in range(rng.randint(1, 9)))
        assert Grants({pattern: "rw"}).may_read(room) is fnmatch.fnmatchcase(room, pattern), \
            (pattern, room)


def test_many_wildcards_match_in_linear_time() -> None:
    """A pattern with many stars against a long near-miss name does not backtrack
    combinatorially (the naive '.*' translation took seconds here)."""
    grants = Grants({"*a" * 31 + "*": "rw", "*a*a*a*a*a*a*a*a*a*b": "rw"})
    start = time.perf_counter()
    for room in ("a" * 30 + "c" * 34, "a" * 63 + "c", "a" * 64):
        grants.mode(room)
    assert grants.mode("a" * 64) == "rw"
    assert Grants({"*a*a*a*a*a*a*a*a*a*b": "rw"}).mode("a" * 63 + "c") is None
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(("pattern", "reason"), [
    ("", "non-empty"),
    ("Ops", "lower case"),
    ("-ops", "starting with"),
    ("a b", "use lower-case"),
    ("a/b", "use lower-case"),
    ("ops[1]", "use lower-case"),
    ("é", "use lower-case"),
    ("x" * 65, "longer than 64"),
])
def test_invalid_patterns(pattern: str, reason: str) -> None:
    """Bad patterns are refused with the reason, by pattern_problem and by Grants."""
    problem = pattern_problem(pattern)
    assert problem is not None and reason in problem
    with pytest.raises(ValueError, match=reason):
        Grants({pattern: "rw"})


def test_invalid_mode_and_too_many_grants() -> None:
    """A mode other than rw/ro, a non-string pattern and more than MAX_GRANTS are refused."""
    with pytest.raises(ValueError, match="'rw' or 'ro'"):
        Grants({"ops": "rwx"})
    assert pattern_problem(5) is not None
    assert Grants({f"r{i}": "rw" for i in range(MAX_GRANTS)}).mode("r0") == "rw"
    with pytest.raises(ValueError, match=f"more than {MAX_GRANTS}"):
        Grants({f"r{i}": "rw" for i in range(MAX_GRANTS + 1)})


def test_parse_patterns() -> None:
    """Comma-separated, spaces and a leading '#' dropped, duplicates once, order kept."""
    assert parse_patterns("general, ops,team-*") == ["general", "ops", "team-*"]
    assert parse_patterns("#general,,#ops,general") == ["general", "ops"]
    with pytest.raises(ValueError, match="no room pattern"):
        parse_patterns(" , #")
    with pytest.raises(ValueError, match="'Ops'"):
        parse_patterns("general,Ops")


def test_grants_value_semantics() -> None:
    """Grants compare and hash by their sorted items; literal_rooms lists exact ones."""
    a = Grants({"ops": "ro", "general": "rw", "team-*": "rw"})
    b = Grants([("team-*", "rw"), ("general", "rw"), ("ops", "ro")])
    assert a == b and hash(a) == hash(b) and a != Grants({"ops": "rw"})
    assert a.items == (("general", "rw"), ("ops", "ro"), ("team-*", "rw"))
    assert a.literal_rooms() == ["general", "ops"]
    assert Grants().mode("general") is None
