"""RemotePresence, the other nodes' users in a room: events and rosters put in order by
the shared log's clock, so neither undoes a newer word of the other."""

from __future__ import annotations

from securechat.rooms.presence import RemotePresence
from securechat.store.base import PresenceEvent, Roster


def join(user: str, node: str, at: int) -> PresenceEvent:
    return PresenceEvent("r", user, node, True, "", at)


def leave(user: str, node: str, at: int, reason: str = "bye") -> PresenceEvent:
    return PresenceEvent("r", user, node, False, reason, at)


def roster(at: int, *pairs: tuple[str, str]) -> Roster:
    return Roster(at, frozenset(pairs))


def test_a_user_is_present_while_any_node_has_them() -> None:
    remote = RemotePresence()
    assert remote.event(join("bob", "n1", 10)) == ("bob", True, "")
    assert remote.event(join("bob", "n2", 11)) is None  # a second node: no news
    assert remote.event(leave("bob", "n1", 12)) is None
    assert "bob" in remote and remote.nodes("bob") == {"n2"}
    assert remote.event(leave("bob", "n2", 13, "idle_timeout")) == (
        "bob", False, "idle_timeout")
    assert "bob" not in remote and not remote


def test_a_roster_drops_pairs_it_lacks_as_disconnected() -> None:
    remote = RemotePresence(roster(5, ("bob", "dead"), ("carol", "n2")))
    assert sorted(remote.users()) == ["bob", "carol"]
    assert remote.roster(roster(20, ("carol", "n2"))) == [("bob", False, "disconnected")]
    assert remote.roster(roster(30, ("carol", "n2"), ("dave", "n3"))) == [
        ("dave", True, "")]  # a join whose event was missed


def test_a_roster_read_before_an_event_does_not_undo_it() -> None:
    remote = RemotePresence()
    remote.event(join("bob", "n2", 100))
    # Read at 99 (before bob joined), handed over after his event: bob stays.
    assert remote.roster(roster(99)) == []
    assert "bob" in remote
    remote.event(leave("bob", "n2", 200))
    assert remote.roster(roster(150, ("bob", "n2"))) == []  # stale: he left at 200
    assert "bob" not in remote
    # A read after both settles it for good, and the old events are forgotten.
    assert remote.roster(roster(300, ("bob", "n2"))) == [("bob", True, "")]
    assert remote.roster(roster(400)) == [("bob", False, "disconnected")]


def test_an_event_older_than_the_pairs_last_word_is_ignored() -> None:
    remote = RemotePresence()
    remote.event(leave("bob", "n2", 50))
    assert remote.event(join("bob", "n2", 40)) is None
    assert "bob" not in remote
