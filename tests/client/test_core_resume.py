"""The sans-I/O client core against a server that keeps the room's log (protocol 2):
client id and resume in auth, the replay up to caught_up, what still is a Gap,
duplicates, store_unavailable and history requests. Driven by hand, no sockets."""

from __future__ import annotations

import pytest

from securechat import protocol
from securechat.client.core import CAUGHT_UP_WAIT, ClientCore, HistoryRequest, Output
from securechat.client.events import Connected, Gap
from securechat.errors import ConfigError
from tests.client.core_harness import TOKEN, Harness, welcome

V2 = 2


def msg(seq: int, body: str = "") -> protocol.Message:
    return protocol.Message("bob", body or f"m{seq}", seq, "2026-01-01T00:00:00Z")


def reconnect(h: Harness, w: protocol.Welcome) -> list[Output]:
    """The link drops and the core reconnects; returns the outputs of the new welcome."""
    h.core.connection_lost("reset", h.now)
    h.outputs()
    return h.connect(w)


def resumed(seq_seen: int = 10, *, welcome_seq: int = 13, epoch: str = "e1") -> Harness:
    """A core that saw up to ``seq_seen`` of log e1, reconnected to a v2 server whose
    room is now at ``welcome_seq``; the welcome's outputs are consumed."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(seq_seen, epoch="e1", version=V2))
    out = reconnect(h, welcome(welcome_seq, epoch=epoch, version=V2))
    assert isinstance(out[0], Connected)
    assert h.auth["resume"] == {"epoch": "e1", "seq": seq_seen}
    return h


def gaps(out: list[Output]) -> list[Gap]:
    return [o for o in out if isinstance(o, Gap)]


# --------------------------------------------------------------------------- auth
def test_client_id_is_in_every_auth_and_resume_from_the_second_on() -> None:
    """The first auth names the client only; each reconnect adds the last position seen."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(10, version=V2))
    assert h.auth == {"type": "auth", "token": TOKEN, "client": "dev-1"}
    h.feed(msg(11), msg(12))
    assert h.core.tracker.position() == ("e1", 12)
    reconnect(h, welcome(12, version=V2))
    assert h.auth == {"type": "auth", "token": TOKEN, "client": "dev-1",
                      "resume": {"epoch": "e1", "seq": 12}}


def test_a_saved_position_is_resumed_on_the_first_connect() -> None:
    """resume= makes the very first auth ask for what was missed since."""
    h = Harness(client_id="dev-1", resume=("e7", 41))
    h.connect(welcome(41, epoch="e7", version=V2))
    assert h.auth["resume"] == {"epoch": "e7", "seq": 41}


@pytest.mark.parametrize("kwargs", [
    {"client_id": ""}, {"client_id": "has space"}, {"client_id": "x" * 65},
    {"resume": ("", 1)}, {"resume": ("e1", -1)}, {"resume": ("e1", True)},
    {"resume": ("e1",)},
])
def test_bad_client_id_or_position_is_a_config_error(kwargs: dict[str, object]) -> None:
    """A client id or saved position the server would refuse fails before connecting."""
    with pytest.raises(ConfigError):
        ClientCore(token=TOKEN, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- replay
def test_replayed_messages_are_flagged_then_caught_up_and_no_gap() -> None:
    """Missed messages come flagged replayed, then one CaughtUp; live ones are not
    flagged, and a complete replay reports no Gap."""
    h = resumed(10, welcome_seq=13)
    h.feed(msg(11), msg(12), msg(13), protocol.CaughtUp(13, 3), msg(14))
    out = h.outputs()
    assert out == [protocol.Message("bob", f"m{s}", s, "2026-01-01T00:00:00Z", replayed=True)
                   for s in (11, 12, 13)] + [protocol.CaughtUp(13, 3), msg(14)]
    assert h.core.stats["replayed"] == 3
    assert h.core.tracker.position() == ("e1", 14)
    h.advance(CAUGHT_UP_WAIT * 2)
    assert gaps(h.outputs()) == []


def test_messages_the_log_no_longer_has_are_a_gap_before_caught_up() -> None:
    """caught_up's missing range is the one Gap; the replayed rest is no gap."""
    h = resumed(10, welcome_seq=20)
    h.feed(*(msg(s) for s in range(16, 21)))
    assert gaps(h.outputs()) == []  # holes are not judged during the replay
    h.feed(protocol.CaughtUp(20, 5, missing_after=10, missing_before=16))
    assert h.outputs() == [Gap(10, 16, 5, room="lobby"), protocol.CaughtUp(20, 5, 10, 16)]
    h.feed(msg(21))
    assert h.outputs() == [msg(21)]
    assert h.core.tracker.position() == ("e1", 21)


def test_a_reset_log_is_a_restarted_gap_and_a_new_position() -> None:
    """A new epoch: nothing is replayed, the Gap says restarted, the position moves over."""
    h = resumed(10, welcome_seq=4, epoch="e2")
    assert h.outputs() == []
    h.feed(protocol.CaughtUp(4, 0, reset=True), msg(5))
    assert h.outputs() == [Gap(0, 5, 4, restarted=True, room="lobby"),
                           protocol.CaughtUp(4, 0, reset=True), msg(5)]
    assert h.core.tracker.position() == ("e2", 5)


def test_reset_under_the_same_epoch_name_is_a_restart_too() -> None:
    """caught_up reset=True wins even if the epoch string did not change."""
    h = resumed(10, welcome_seq=13)
    h.feed(protocol.CaughtUp(13, 0, reset=True))
    assert gaps(h.outputs()) == [Gap(0, 14, 13, restarted=True, room="lobby")]
    assert h.core.tracker.position() == ("e1", 13)


def test_a_message_already_seen_is_not_emitted_twice() -> None:
    """A replay repeating a seq, or a seq at or below the last seen, is dropped."""
    h = resumed(10, welcome_seq=12)
    h.feed(msg(11), msg(11), msg(12), protocol.CaughtUp(12, 2), msg(12), msg(9), msg(13))
    seqs = [o.seq for o in h.outputs() if isinstance(o, protocol.Message)]
    assert seqs == [11, 12, 13]


def test_live_messages_during_the_replay_are_not_flagged() -> None:
    """Only numbers up to the welcome's seq are the replay; later ones are live."""
    h = resumed(10, welcome_seq=11)
    h.feed(msg(11), msg(12), protocol.CaughtUp(11, 1))
    flags = [(o.seq, o.replayed) for o in h.outputs() if isinstance(o, protocol.Message)]
    assert flags == [(11, True), (12, False)]


def test_a_hole_in_live_traffic_after_caught_up_is_a_gap() -> None:
    """After the replay, a seq jump is reported as before."""
    h = resumed(10, welcome_seq=10)
    h.feed(protocol.CaughtUp(10, 0), msg(11), msg(13))
    assert gaps(h.outputs()) == [Gap(11, 14, 1, room="lobby")]


def test_nothing_missed_needs_no_caught_up() -> None:
    """Welcome at our own position: no replay to wait for, no deadline, no Gap."""
    h = resumed(10, welcome_seq=10)
    deadline = h.core.next_deadline()
    assert deadline is not None and deadline > h.now + CAUGHT_UP_WAIT  # the heartbeat's
    h.feed(msg(11), msg(13))
    assert gaps(h.outputs()) == [Gap(11, 14, 1, room="lobby")]


def test_a_server_that_sends_no_caught_up_gets_the_old_gap_after_the_wait() -> None:
    """A v2 welcome but no caught_up (a server ignoring resume): after CAUGHT_UP_WAIT
    without a replayed message, what was numbered meanwhile is a Gap, as with v1."""
    h = resumed(10, welcome_seq=13)
    assert h.core.next_deadline() == h.now + CAUGHT_UP_WAIT
    h.advance(CAUGHT_UP_WAIT - 0.01)
    assert h.outputs() == []
    h.advance(0.01)
    assert h.outputs() == [Gap(10, 14, 3, room="lobby")]
    h.feed(msg(14))
    assert h.outputs() == [msg(14)]  # live, not flagged
    h.feed(protocol.CaughtUp(14, 0))  # a late one is shown, and judges nothing again
    assert h.outputs() == [protocol.CaughtUp(14, 0)]


def test_replayed_messages_keep_the_wait_from_expiring() -> None:
    """Each replayed message restarts the wait: a slow replay is not taken for none."""
    h = resumed(10, welcome_seq=13)
    h.advance(CAUGHT_UP_WAIT * 0.9)
    h.feed(msg(11))
    h.advance(CAUGHT_UP_WAIT * 0.9)
    h.feed(msg(12), msg(13), protocol.CaughtUp(13, 3))
    assert gaps(h.outputs()) == []


def test_a_v1_server_reports_the_gap_at_the_welcome() -> None:
    """protocol 1 ignores resume and sends no caught_up: the Gap follows Connected."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(10))
    out = reconnect(h, welcome(13))
    assert "resume" in h.auth
    assert isinstance(out[0], Connected) and out[1] == Gap(10, 14, 3, room="lobby")
    assert h.core.next_deadline() == h.now + 20.0  # only the heartbeat: no replay wait


# --------------------------------------------------------------------------- sending
def test_a_duplicate_ack_settles_the_message_with_its_original_seq() -> None:
    """ack duplicate=True (a recognised resend) is an ack like any other."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(10, version=V2))
    out = h.message()
    h.core.send(out)
    h.frames()
    h.feed(protocol.Ack(out.id, 7, duplicate=True))
    assert out.seq == 7 and out.error is None
    assert h.core.queued == 0
    assert h.outputs() == [protocol.Ack(out.id, 7, duplicate=True)]


def test_store_unavailable_resends_after_retry_after_in_order() -> None:
    """store_unavailable (as the server refuses every message behind the first): they
    go again after the pause, first ones first, window 1 growing with the acks."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(10, version=V2))
    msgs = [h.message() for _ in range(3)]
    for m in msgs[:2]:
        h.core.send(m)
    assert [f["id"] for f in h.frames()] == [msgs[0].id, msgs[1].id]
    h.feed(protocol.ErrorFrame("store_unavailable", "disk full", msgs[0].id, 2.0),
           protocol.ErrorFrame("store_unavailable", "disk full", msgs[1].id, 2.0))
    h.core.send(msgs[2])
    assert h.frames() == []
    assert h.core.next_deadline() == h.now + 2.0
    h.advance(1.99)
    assert h.frames() == []
    h.advance(0.01)
    assert [f["id"] for f in h.frames()] == [msgs[0].id]
    h.feed(protocol.Ack(msgs[0].id, 11))
    assert [f["id"] for f in h.frames()] == [msgs[1].id, msgs[2].id]
    h.feed(protocol.Ack(msgs[1].id, 12), protocol.Ack(msgs[2].id, 13))
    assert [m.seq for m in msgs] == [11, 12, 13]
    assert h.core.stats["store_unavailable"] == 2
    assert [o.code for o in h.outputs() if isinstance(o, protocol.ErrorFrame)] == [
        "store_unavailable", "store_unavailable"]


# --------------------------------------------------------------------------- history
def test_history_goes_out_once_connected_and_its_answer_is_events() -> None:
    """A request made offline is sent after the welcome; history_msg and history_end
    come out as events in order."""
    h = Harness(client_id="dev-1")
    h.core.history(HistoryRequest("h1", before=50, limit=2))
    h.connect(welcome(60, version=V2))
    assert h.frames() == [{"type": "history", "id": "h1", "before": 50, "limit": 2}]
    ts = "2026-01-01T00:00:00Z"
    answer: list[protocol.ServerFrame] = [
        protocol.HistoryMessage("h1", "bob", "old", 48, ts),
        protocol.HistoryMessage("h1", "bob", "older", 49, ts),
        protocol.HistoryEnd("h1", 2, True, 1, 60),
    ]
    h.feed(*answer)
    assert h.outputs() == answer
    assert h.core.tracker.position() == ("e1", 60)  # history is not room traffic


def test_an_unanswered_history_request_is_asked_again_after_a_reconnect() -> None:
    """The link died before history_end: ask again. An answered one is not."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(60, version=V2))
    h.core.history(HistoryRequest("h1", limit=5))
    h.core.history(HistoryRequest("h2", after=3))
    assert [f["id"] for f in h.frames()] == ["h1", "h2"]
    h.feed(protocol.HistoryEnd("h1", 0, False, None, 60))
    reconnect(h, welcome(60, version=V2))
    h.feed(protocol.CaughtUp(60, 0))
    assert h.frames() == [{"type": "history", "id": "h2", "after": 3, "limit": 50}]


def test_a_refused_history_request_is_not_asked_again() -> None:
    """An error naming the request ends it, as a history_end would."""
    h = Harness(client_id="dev-1")
    h.connect(welcome(60, version=V2))
    h.core.history(HistoryRequest("h1", before=5))
    h.frames()
    h.feed(protocol.ErrorFrame("bad_frame", "no such range", "h1"))
    reconnect(h, welcome(60, version=V2))
    assert h.frames() == []


def test_history_on_a_v1_server_is_refused_with_an_error_event() -> None:
    """A protocol-1 server keeps no log: the request ends with an error naming it."""
    h = Harness()
    h.core.history(HistoryRequest("h1"))
    out = h.connect(welcome(10))
    assert protocol.ErrorFrame("unknown_type", "this server keeps no history", "h1") in out
    assert h.frames() == []


@pytest.mark.parametrize("kwargs", [
    {"before": 5, "after": 1}, {"limit": 0}, {"limit": protocol.MAX_HISTORY_LIMIT + 1},
    {"before": -1}, {"after": True},
])
def test_bad_history_arguments_fail_in_the_caller(kwargs: dict[str, object]) -> None:
    """before and after together, a limit out of 1..500, a negative seq: ValueError."""
    with pytest.raises(ValueError, match="history"):
        HistoryRequest("h1", **kwargs)  # type: ignore[arg-type]
