"""The member list of one client (securechat.client.roster): a set in a sorted list."""

from __future__ import annotations

from securechat.client.roster import Roster


def test_a_roster_answers_membership_like_a_set() -> None:
    roster = Roster(["carol", "alice", "bob", "alice"])
    assert len(roster) == 3 and roster.frozen() == {"alice", "bob", "carol"}
    assert "bob" in roster and "dave" not in roster and 3 not in roster
    roster.add("dave")
    roster.discard("alice")
    assert roster.frozen() == {"bob", "carol", "dave"}
    assert roster._names == ["bob", "carol", "dave"]  # kept sorted: lookups bisect


def test_joining_a_member_or_leaving_a_stranger_changes_nothing() -> None:
    roster = Roster(["alice"])
    roster.add("alice")
    roster.discard("bob")
    assert roster._names == ["alice"]
    roster.discard("alice")
    assert len(roster) == 0 and "alice" not in roster


def test_names_are_interned_so_clients_share_them() -> None:
    name = "".join(["us", "er7"])  # a fresh string, as decoded from a frame
    first, second = Roster([name]), Roster()
    second.add("".join(["use", "r7"]))
    assert first._names[0] is second._names[0]
