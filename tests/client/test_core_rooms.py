"""The sans-I/O client core with rooms (protocol 3): the auth rooms list with one
resume per room, overflow to join frames, join/leave, per-room replay and gaps,
forbidden and not_joined messages, a removed grant. Driven by hand, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from securechat import protocol
from securechat.client.core import Output
from securechat.client.events import Connected, Gap, SendFailed
from securechat.client.parts import Outgoing
from securechat.client.rooms import RoomBook
from securechat.client.view import SessionView
from securechat.errors import ConfigError, RemoteProtocolError
from tests.client.core_harness import TOKEN, Harness, welcome


def v3_welcome(*rooms: str, grants: tuple[tuple[str, str], ...] = (("*", "rw"),)
               ) -> protocol.Welcome:
    return protocol.Welcome("alice", "", (), 20.0, 0, protocol=3, rooms=rooms, grants=grants)


def msg(room: str, seq: int) -> protocol.Message:
    return protocol.Message("bob", f"{room}{seq}", seq, "2026-01-01T00:00:00Z", room=room)


def joined(room: str, seq: int, epoch: str = "") -> protocol.Joined:
    return protocol.Joined(room, ("alice", "bob"), seq, epoch or f"e-{room}")


def reconnect(h: Harness, w: protocol.Welcome) -> list[Output]:
    h.core.connection_lost("reset", h.now)
    h.outputs()
    return h.connect(w)


def entries(h: Harness) -> list[Any]:
    return list(h.auth["rooms"])


def send(h: Harness, body: str, room: str) -> Any:
    h.ids += 1
    mid = f"m{h.ids}"
    message = Outgoing(mid, body, protocol.encode(protocol.SendMessage(body, mid, room)),
                       h.ids, room)
    h.core.send(message)
    return message


def two_rooms() -> Harness:
    """A v3 client in a (at 5) and b (at 7) that saw a6 and b8; outputs consumed."""
    h = Harness(client_id="dev-1", rooms=["a", "b"])
    h.connect(v3_welcome("a", "b"))
    assert entries(h) == ["a", "b"]
    h.feed(joined("a", 5), joined("b", 7), msg("a", 6), msg("b", 8))
    h.outputs()
    return h


# --------------------------------------------------------------------------- login
def test_a_v3_login_names_its_rooms_and_each_resumes_from_its_own_position() -> None:
    """First auth: the room names; after a reconnect: each with its own (epoch, seq)."""
    h = two_rooms()
    assert "resume" not in h.auth
    assert h.core.rooms.positions() == {"a": ("e-a", 6), "b": ("e-b", 8)}
    reconnect(h, v3_welcome("a", "b"))
    assert entries(h) == [{"room": "a", "resume": {"epoch": "e-a", "seq": 6}},
                          {"room": "b", "resume": {"epoch": "e-b", "seq": 8}}]
    assert h.frames() == []  # everything fitted in auth: no join frames


def test_an_empty_rooms_list_is_a_v3_login_in_no_room() -> None:
    """rooms=[] sends "rooms": [] (not the old-style login into the default room)."""
    h = Harness(rooms=[])
    h.connect(v3_welcome())
    assert h.auth == {"type": "auth", "token": TOKEN, "rooms": []}


def test_saved_positions_are_resumed_on_the_first_login() -> None:
    """resumes= gives each named room its position; resume= is the first room's."""
    h = Harness(rooms=["a", "b"], resume=("ea", 3), resumes={"b": ("eb", 9)})
    h.connect(v3_welcome("a", "b"))
    assert entries(h) == [{"room": "a", "resume": {"epoch": "ea", "seq": 3}},
                          {"room": "b", "resume": {"epoch": "eb", "seq": 9}}]


def test_more_rooms_than_auth_may_name_go_as_join_frames_after_the_welcome() -> None:
    """70 rooms: MAX_AUTH_ROOMS in auth, the other 6 as join frames (with resume)."""
    names = [f"r{i}" for i in range(70)]
    h = Harness(rooms=names, resumes={name: ("e", 1) for name in names})
    h.connect(v3_welcome(*names[:64]))
    assert [e["room"] for e in entries(h)] == names[:protocol.MAX_AUTH_ROOMS]
    assert h.frames() == [{"type": "join", "room": name, "resume": {"epoch": "e", "seq": 1}}
                          for name in names[64:]]


def test_an_auth_frame_stays_under_the_pre_auth_limit() -> None:
    """Long names with resumes: auth takes what fits in PRE_AUTH_MAX_FRAME, joins the rest."""
    names = [f"{i:02d}" + "x" * 62 for i in range(40)]
    h = Harness(rooms=names, resumes={name: ("epoch-" + "e" * 50, 2**40) for name in names})
    h.core.start(h.now)
    h.outputs()
    h.core.connection_made(h.now)
    data = h.core.data_to_send()
    assert len(data) <= protocol.PRE_AUTH_MAX_FRAME
    auth = protocol.decode_client_frame(data)
    assert isinstance(auth, protocol.Auth) and auth.rooms is not None
    fitted = [entry.room for entry in auth.rooms]
    assert 0 < len(fitted) < len(names) and fitted == names[:len(fitted)]
    h.feed(v3_welcome(*fitted))
    rest = [f["room"] for f in h.frames()]
    assert rest == names[len(fitted):]


# --------------------------------------------------------------------------- join / leave
def test_join_and_leave_while_connected_send_frames_and_change_the_next_login() -> None:
    """join sends join, leave sends leave; the next auth has the joined room, not the left."""
    h = two_rooms()
    h.core.join("c")
    h.core.leave("a")
    assert h.frames() == [{"type": "join", "room": "c"}, {"type": "leave", "room": "a"}]
    h.feed(joined("c", 0), protocol.Left("a", "left"))
    reconnect(h, v3_welcome("b", "c"))
    assert entries(h) == [{"room": "b", "resume": {"epoch": "e-b", "seq": 8}},
                          {"room": "c", "resume": {"epoch": "e-c", "seq": 0}}]


def test_join_and_leave_while_logging_in_are_sent_after_the_welcome() -> None:
    """A room joined before the welcome is joined after it; one left that was in the
    auth is left after it."""
    h = Harness(rooms=["a"])
    h.core.start(h.now)
    h.outputs()
    h.core.connection_made(h.now)
    h.frames()
    h.core.join("b")
    h.core.leave("a")
    assert h.frames() == []
    h.feed(v3_welcome("a"))
    assert h.frames() == [{"type": "leave", "room": "a"}, {"type": "join", "room": "b"}]


def test_an_old_style_client_that_joins_logs_in_with_every_room_next_time() -> None:
    """No rooms=: the old login; after join("ops"), a v3 one with lobby (by name) and ops."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(10, version=3))
    assert "rooms" not in h.auth
    h.core.join("ops")
    assert h.frames() == [{"type": "join", "room": "ops"}]
    h.feed(joined("ops", 3))
    reconnect(h, v3_welcome("lobby", "ops"))
    assert entries(h) == [{"room": "lobby", "resume": {"epoch": "e1", "seq": 10}},
                          {"room": "ops", "resume": {"epoch": "e-ops", "seq": 3}}]


def test_an_old_style_client_joining_before_its_first_login_joins_after_the_welcome() -> None:
    """The default room's name is not known yet: old login, then a join frame."""
    h = Harness()
    h.core.join("ops")
    h.connect(welcome(10, version=3))
    assert "rooms" not in h.auth
    assert h.frames() == [{"type": "join", "room": "ops"}]
    assert h.core.rooms.names() == ("lobby", "ops")


# --------------------------------------------------------------------------- per-room replay
def test_each_room_replays_to_its_own_caught_up_without_a_gap() -> None:
    """Two resumed rooms: replayed messages flagged with their room, one CaughtUp each."""
    h = two_rooms()
    reconnect(h, v3_welcome("a", "b"))
    h.feed(joined("a", 7, "e-a"), msg("a", 7), protocol.CaughtUp(7, 1, room="a"),
           joined("b", 9, "e-b"), msg("b", 9), protocol.CaughtUp(9, 1, room="b"), msg("a", 8))
    out = [o for o in h.outputs() if isinstance(o, protocol.Message | protocol.CaughtUp | Gap)]
    assert out == [protocol.Message("bob", "a7", 7, msg("a", 7).ts, True, "a"),
                   protocol.CaughtUp(7, 1, room="a"),
                   protocol.Message("bob", "b9", 9, msg("b", 9).ts, True, "b"),
                   protocol.CaughtUp(9, 1, room="b"), msg("a", 8)]
    assert h.core.rooms.positions() == {"a": ("e-a", 8), "b": ("e-b", 9)}


def test_a_gap_names_its_room_and_other_rooms_are_unaffected() -> None:
    """Pruned messages in b are a Gap(room="b"); room a reports nothing."""
    h = two_rooms()
    reconnect(h, v3_welcome("a", "b"))
    h.feed(joined("a", 6, "e-a"), protocol.CaughtUp(6, 0, room="a"),
           joined("b", 20, "e-b"), protocol.CaughtUp(20, 0, 8, 21, room="b"))
    gaps = [o for o in h.outputs() if isinstance(o, Gap)]
    assert gaps == [Gap(8, 21, 12, room="b")]


def test_live_holes_are_judged_per_room() -> None:
    """Seq 8 after 6 in room a, nothing in flight: Gap(room="a"); b's numbers are its own."""
    h = two_rooms()
    h.feed(msg("b", 9), msg("a", 8))
    assert [o for o in h.outputs() if isinstance(o, Gap)] == [Gap(6, 9, 1, room="a")]


# --------------------------------------------------------------------------- refusals
def test_a_forbidden_message_fails_its_handle_and_is_never_resent() -> None:
    """error forbidden with the message's id: SendFailed + ErrorFrame, not retried."""
    h = two_rooms()
    message = send(h, "hi", "b")
    assert h.frames() == [{"type": "msg", "body": "hi", "id": "m1", "room": "b"}]
    err = protocol.ErrorFrame("forbidden", "read only", "m1", room="b")
    h.feed(err)
    out = h.outputs()
    assert isinstance(message.error, RemoteProtocolError) and message.error.code == "forbidden"
    assert next(o for o in out if isinstance(o, SendFailed)).room == "b"
    assert err in out
    reconnect(h, v3_welcome("a", "b"))
    assert [f for f in h.frames() if f["type"] == "msg"] == []
    assert h.core.rooms.names() == ("a", "b")  # the room stays: it is read-only, not gone


def test_not_joined_fails_the_message_too() -> None:
    """A message to a room the session is not in fails with not_joined."""
    h = two_rooms()
    message = send(h, "hi", "zzz")
    h.frames()
    h.feed(protocol.ErrorFrame("not_joined", "not in zzz", "m1", room="zzz"))
    assert isinstance(message.error, RemoteProtocolError)
    assert message.error.code == "not_joined"
    assert h.core.queued == 0


def test_other_rooms_messages_are_resent_after_a_reconnect_to_their_room() -> None:
    """Unacked messages go again with the same id and room after the joins."""
    h = two_rooms()
    send(h, "x", "a")
    send(h, "y", "b")
    h.frames()
    reconnect(h, v3_welcome("a", "b"))
    assert h.frames() == [{"type": "msg", "body": "x", "id": "m1", "room": "a"},
                          {"type": "msg", "body": "y", "id": "m2", "room": "b"}]


def test_a_removed_grant_takes_the_room_out_of_the_next_login() -> None:
    """Left(room, "forbidden") is shown and the room is no longer asked for."""
    h = two_rooms()
    h.feed(protocol.ErrorFrame("forbidden", "grant removed", room="a"),
           protocol.Left("a", "forbidden"))
    assert protocol.Left("a", "forbidden") in h.outputs()
    reconnect(h, v3_welcome("b"))
    assert [e["room"] for e in entries(h)] == ["b"]


def test_a_refused_join_is_not_asked_for_again() -> None:
    """error room_full for a room of the auth list: dropped from the next login."""
    h = Harness(rooms=["a", "b"])
    h.connect(v3_welcome("b"))
    h.feed(protocol.ErrorFrame("room_full", "full", room="a"), joined("b", 1))
    reconnect(h, v3_welcome("b"))
    assert [e["room"] for e in entries(h)] == ["b"]


# --------------------------------------------------------------------------- pure pieces
def test_the_room_book_rejects_bad_room_names() -> None:
    """A name the server would refuse fails at construction (ConfigError)."""
    for bad in ("Ops", "", "#ops", "x" * 65):
        with pytest.raises(ConfigError):
            RoomBook([bad])


def test_the_session_view_follows_joined_left_presence_and_grants() -> None:
    """Rooms, members per room, the default room and grants as the events tell."""
    view = SessionView(None)
    view.apply(Connected(welcome(3, version=3), "h:1", False))
    assert view.room == "lobby" and view.members_of("lobby") == {"alice", "bob"}
    view.want("ops")
    view.apply(joined("ops", 0))
    view.apply(protocol.Join("carol", room="ops"))
    view.apply(protocol.Leave("bob", "bye"))  # "" room: a v2 frame about the default room
    assert view.members_of("ops") == {"alice", "bob", "carol"}
    assert view.members_of("lobby") == {"alice"}
    assert list(view.joined) == ["lobby", "ops"]
    view.apply(protocol.Grants((("ops", "ro"),)))
    assert view.grants == (("ops", "ro"),)
    view.apply(protocol.Left("ops", "forbidden"))
    assert list(view.joined) == ["lobby"] and view.wanted == ["lobby"]
