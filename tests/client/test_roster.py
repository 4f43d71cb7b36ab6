"""Member lists shared between the clients of a loop (securechat.client.roster)."""

from __future__ import annotations

import gc

from securechat.client.roster import Rosters


def test_a_list_answers_membership_like_a_set() -> None:
    rosters = Rosters()
    members = rosters.of(["carol", "alice", "bob", "alice"])
    assert members.names == ("alice", "bob", "carol")
    assert "bob" in members and "dave" not in members and 3 not in members
    members = rosters.left(rosters.joined(members, "dave"), "alice")
    assert members.names == ("bob", "carol", "dave") and len(members) == 3


def test_joining_a_member_or_leaving_a_stranger_changes_nothing() -> None:
    rosters = Rosters()
    members = rosters.of(["alice"])
    assert rosters.joined(members, "alice") is members
    assert rosters.left(members, "bob") is members
    assert rosters.left(members, "alice") is rosters.empty


def test_clients_that_see_the_same_members_share_one_list() -> None:
    rosters = Rosters()
    first = rosters.joined(rosters.of(["alice"]), "bob")
    second = rosters.joined(rosters.of(["alice"]), "bob")  # the same join, replayed
    welcomed = rosters.of(["bob", "alice"])  # a later welcome with the same members
    assert first is second is welcomed


def test_a_list_nobody_holds_is_freed() -> None:
    rosters = Rosters()
    members = rosters.joined(rosters.of(["alice"]), "bob")
    assert len(rosters._known) == 1  # the first list went with its last holder
    del members
    gc.collect()
    assert len(rosters._known) == 0
