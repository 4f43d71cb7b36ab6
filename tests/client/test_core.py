"""The sans-I/O client core: every protocol decision, driven by hand (no sockets, no clock)."""

from __future__ import annotations

import pytest

from securechat import protocol
from securechat.client.backoff import BackoffPolicy
from securechat.client.core import (
    DEAD_AFTER_INTERVALS,
    SEND_WINDOW,
    ClientCore,
    CloseLink,
    Connect,
    Phase,
    SeqTracker,
)
from securechat.client.events import (
    Closed,
    Connected,
    Connecting,
    Disconnected,
    Gap,
    Reconnecting,
    SendFailed,
)
from securechat.errors import (
    AuthRefused,
    ClientClosed,
    ConfigError,
    GaveUp,
    LocalProtocolError,
    RemoteProtocolError,
    TLSVerificationFailed,
)
from tests.client.core_harness import TOKEN, Harness, welcome


# --------------------------------------------------------------------------- SeqTracker
def test_no_gap_when_every_number_is_seen() -> None:
    """Consecutive numbers after the welcome leave no gap."""
    tracker = SeqTracker()
    assert tracker.welcome(10) is None
    for seq in (11, 12, 13):
        tracker.seen(seq)
    assert tracker.settle() is None
    assert tracker.last == 13


def test_own_ack_arriving_late_is_not_a_gap() -> None:
    """Our ack for 11 may come after someone's 12: not a gap once it arrives."""
    tracker = SeqTracker()
    tracker.welcome(10)
    tracker.seen(12)
    tracker.seen(11)
    assert tracker.settle() is None
    assert tracker.last == 12


def test_hole_with_nothing_in_flight_is_a_gap() -> None:
    """A hole below the highest number counts once nothing of ours is in flight."""
    tracker = SeqTracker()
    tracker.welcome(10)
    tracker.seen(11)
    tracker.seen(14)
    assert tracker.settle() == Gap(11, 15, 2)
    assert tracker.settle() is None


def test_reconnect_reports_what_was_numbered_meanwhile() -> None:
    """A welcome with a higher seq reports the messages numbered while away."""
    tracker = SeqTracker()
    tracker.welcome(5)
    tracker.seen(6)
    assert tracker.welcome(9) == Gap(6, 10, 3)
    assert tracker.welcome(9) is None


def test_new_epoch_means_a_new_numbering() -> None:
    """After a restart (new epoch) seq 0..3 is all new, even past the old numbering."""
    tracker = SeqTracker()
    tracker.welcome(2, "aaa")
    assert tracker.welcome(3, "bbb") == Gap(0, 4, 3, restarted=True)
    assert tracker.welcome(3, "bbb") is None
    assert tracker.welcome(0, "ccc") is None


def test_restarted_server_numbering_starts_again() -> None:
    """Without epochs, numbering that went backwards is a restart."""
    tracker = SeqTracker()
    tracker.welcome(40)
    assert tracker.welcome(3) == Gap(0, 4, 3, restarted=True)
    assert tracker.welcome(0) is None
    assert tracker.last == 0


# --------------------------------------------------------------------------- connecting
def test_start_asks_for_a_connection_and_auth_follows_the_handshake() -> None:
    """start() emits Connecting and a Connect action; the auth frame goes after TLS."""
    h = Harness()
    h.core.start(h.now)
    assert h.outputs() == [Connecting("h:1", 0), Connect(0)]
    assert h.core.data_to_send() == b""
    assert h.core.next_deadline() == h.now + 10.0
    h.core.connection_made(h.now)
    assert h.frames() == [{"type": "auth", "token": TOKEN}]


def test_welcome_connects_and_counts() -> None:
    """The welcome gives Connected (not a reconnect) and starts the healthy period."""
    h = Harness()
    out = h.connect()
    assert out == [Connected(welcome(), "h:1", False)]
    assert h.core.phase is Phase.ACTIVE and h.core.welcome == welcome()
    assert h.core.stats["attempts"] == 1 and h.core.stats["connects"] == 1


def test_token_is_checked_before_connecting() -> None:
    """An empty or spaced token is a ConfigError at construction."""
    for bad in ("", "  ", "a b"):
        with pytest.raises(ConfigError):
            ClientCore(token=bad)
    with pytest.raises(ConfigError):
        ClientCore(token=TOKEN, connect_timeout=0)
    with pytest.raises(ConfigError):
        ClientCore(token=TOKEN, heartbeat=0)


def test_auth_refused_is_fatal_and_fails_the_queue() -> None:
    """auth_failed closes the link and ends the core with AuthRefused: no retry."""
    h = Harness()
    pending = h.message()
    h.core.send(pending)
    h.core.start(h.now)
    h.outputs()
    h.core.connection_made(h.now)
    h.frames()
    h.feed(protocol.ErrorFrame("auth_failed", "unknown token"))
    out = h.outputs()
    assert isinstance(out[0], CloseLink)
    closed = out[-1]
    assert isinstance(closed, Closed) and isinstance(closed.error, AuthRefused)
    assert closed.error.code == "auth_failed"
    assert not [o for o in out if isinstance(o, Reconnecting | Connect)]
    assert h.core.done and h.core.next_deadline() is None
    assert isinstance(pending.error, AuthRefused)
    assert h.core.stats["attempts"] == 1


def test_revoked_while_connected_is_fatal() -> None:
    """revoked on a live link: Disconnected, then Closed with AuthRefused."""
    h = Harness()
    h.connect()
    h.feed(protocol.ErrorFrame("revoked", "token revoked"))
    out = h.outputs()
    assert [type(o) for o in out] == [CloseLink, Disconnected, Closed]
    closed = out[-1]
    assert isinstance(closed, Closed) and isinstance(closed.error, AuthRefused)


def test_untrusted_certificate_is_fatal() -> None:
    """A TLS verification failure reported by the driver ends the core, no retry."""
    h = Harness()
    h.core.start(h.now)
    h.outputs()
    h.core.connection_lost("did not verify", h.now, error=TLSVerificationFailed("unknown CA"))
    out = h.outputs()
    closed = out[-1]
    assert isinstance(closed, Closed) and isinstance(closed.error, TLSVerificationFailed)
    assert not [o for o in out if isinstance(o, Reconnecting)]


def test_connect_timeout_retries_with_the_stage_in_the_reason() -> None:
    """An attempt that outlives connect_timeout is abandoned and retried."""
    h = Harness(connect_timeout=2.0)
    h.core.start(h.now)
    h.outputs()
    h.core.stage = "resolving"
    h.advance(1.9)
    assert h.outputs() == []
    h.advance(0.1)
    out = h.outputs()
    assert isinstance(out[0], CloseLink)
    again = out[-1]
    assert isinstance(again, Reconnecting)
    assert again.reason == "timed out after 2 s (resolving)" and again.delay == 0.5


def test_server_full_reconnects_after_its_hint() -> None:
    """A closing error with retry_after is retryable; the hint is the delay's floor."""
    h = Harness()
    h.core.start(h.now)
    h.outputs()
    h.core.connection_made(h.now)
    h.feed(protocol.ErrorFrame("server_full", "full", retry_after=4.0))
    out = h.outputs()
    again = out[-1]
    assert isinstance(again, Reconnecting) and again.retry_after == 4.0
    assert again.delay == 4.5 and h.core.next_deadline() == h.now + 4.5


# --------------------------------------------------------------------------- backoff
def test_failed_attempts_back_off_then_give_up() -> None:
    """Refused attempts wait 0.5, 1, 2 s (longest jitter); max_retries=3 then GaveUp."""
    h = Harness(backoff=BackoffPolicy(base=0.5, cap=30.0, max_retries=3))
    h.core.start(h.now)
    delays = []
    attempts = []
    while not h.core.done:
        for out in h.outputs():
            if isinstance(out, Connecting):
                attempts.append(out.attempt)
        h.core.connection_lost("connection refused", h.now)
        last = h.outputs()[-1]
        if isinstance(last, Reconnecting):
            delays.append(last.delay)
            h.to_deadline()
        else:
            closed = last
    assert delays == [0.5, 1.0, 2.0]
    assert attempts == [0, 1, 2, 3]
    assert isinstance(closed, Closed) and isinstance(closed.error, GaveUp)
    assert "gave up after 3 retries: connection refused" in str(closed.error)
    assert h.core.stats["attempts"] == 4


def test_the_first_attempt_has_no_delay_but_reconnects_do() -> None:
    """The core asks for a connection at start at once; after a loss it waits."""
    h = Harness()
    h.connect()
    h.core.connection_lost("connection reset", h.now)
    out = h.outputs()
    assert [type(o) for o in out] == [CloseLink, Disconnected, Reconnecting]
    assert h.core.next_deadline() == h.now + 0.5
    h.advance(0.4)
    assert h.outputs() == []
    h.advance(0.1)
    assert h.outputs() == [Connecting("h:1", 1), Connect(1)]


@pytest.mark.parametrize(("hint", "floor"), [
    ("1e300", 30.0), ("1e999", 30.0), ("-5", 0.0), ("2", 2.0),
])
def test_bye_retry_after_is_clamped(hint: str, floor: float) -> None:
    """A server's retry_after is kept within [0, cap]: never a wait of 1e300 s or inf."""
    h = Harness()
    h.connect()
    h.core.receive_data(b'{"type":"bye","reason":"shutdown","retry_after":%s}\n'
                        % hint.encode(), h.now)
    out = h.outputs()
    again = out[-1]
    assert isinstance(again, Reconnecting)
    assert again.retry_after == floor
    assert again.delay == floor + 0.5
    assert "shutting down" in again.reason


def test_error_frames_show_the_clamped_hint() -> None:
    """Users see the hint the client honours, not what the server sent."""
    h = Harness()
    h.connect()
    msg = h.message()
    h.core.send(msg)
    h.frames()
    h.feed(protocol.ErrorFrame("rate_limited", "slow down", msg.id, 1e300))
    err = h.outputs()[0]
    assert isinstance(err, protocol.ErrorFrame) and err.retry_after == 30.0


# --------------------------------------------------------------------------- sending
def test_messages_queued_offline_go_out_in_order_after_the_welcome() -> None:
    """Sends before the link is up wait, then go in order; acks give each its seq."""
    h = Harness()
    msgs = [h.message(f"b{i}") for i in range(3)]
    for msg in msgs:
        h.core.send(msg)
    assert h.core.queued == 3
    h.connect()
    assert [f["id"] for f in h.frames()] == ["m1", "m2", "m3"]
    h.feed(*(protocol.Ack(m.id, 11 + i) for i, m in enumerate(msgs)))
    assert [m.seq for m in msgs] == [11, 12, 13]
    assert h.core.queued == 0 and h.core.stats["acked"] == 3
    assert [type(o) for o in h.outputs()] == [protocol.Ack] * 3


def test_the_ack_window_bounds_what_is_in_flight() -> None:
    """At most SEND_WINDOW messages are unacknowledged on the wire; acks let more go."""
    h = Harness()
    h.connect()
    msgs = [h.message() for _ in range(SEND_WINDOW + 8)]
    for msg in msgs:
        h.core.send(msg)
    assert len(h.frames()) == SEND_WINDOW
    h.feed(protocol.Ack(msgs[0].id, 11), protocol.Ack(msgs[1].id, 12))
    assert [f["id"] for f in h.frames()] == [msgs[SEND_WINDOW].id, msgs[SEND_WINDOW + 1].id]


def test_unacked_messages_are_resent_after_reconnect_in_order_with_the_same_ids() -> None:
    """The link dies with three messages in flight: after the next welcome they go
    first, in their original order, with their original ids."""
    h = Harness()
    h.connect()
    msgs = [h.message(f"b{i}") for i in range(3)]
    for msg in msgs:
        h.core.send(msg)
    first = h.frames()
    h.feed(protocol.Ack(msgs[0].id, 11))
    h.core.connection_lost("connection reset", h.now)
    later = h.message("later")
    h.core.send(later)
    assert isinstance(h.outputs()[-1], Reconnecting)
    out = h.connect(welcome(11))
    assert isinstance(out[0], Connected) and out[0].reconnect
    again = h.frames()
    assert [f["id"] for f in again] == ["m2", "m3", "m4"]
    assert again[:2] == first[1:]
    assert h.core.stats["resent"] == 2


def test_rate_limited_message_is_resent_first_after_the_pause() -> None:
    """rate_limited: the message goes back to the head of the queue, the window drops
    to 1 and nothing is sent before retry_after has passed."""
    h = Harness()
    h.connect()
    msgs = [h.message() for _ in range(3)]
    for msg in msgs[:2]:
        h.core.send(msg)
    h.frames()
    h.feed(protocol.Ack(msgs[0].id, 11),
           protocol.ErrorFrame("rate_limited", "slow down", msgs[1].id, 0.5))
    h.core.send(msgs[2])
    assert h.frames() == []
    assert h.core.next_deadline() == h.now + 0.5
    h.advance(0.49)
    assert h.frames() == []
    h.advance(0.01)
    assert [f["id"] for f in h.frames()] == [msgs[1].id]  # window 1
    h.feed(protocol.Ack(msgs[1].id, 12))
    assert [f["id"] for f in h.frames()] == [msgs[2].id]
    assert h.core.stats["rate_limited"] == 1


def test_refused_message_fails_without_dropping_the_link() -> None:
    """bad_frame for one of our ids fails that message for good; the link stays up."""
    h = Harness()
    h.connect()
    msg = h.message()
    h.core.send(msg)
    h.frames()
    h.feed(protocol.ErrorFrame("bad_frame", "no", msg.id))
    out = h.outputs()
    assert isinstance(out[0], SendFailed) and isinstance(out[0].error, RemoteProtocolError)
    assert isinstance(msg.error, RemoteProtocolError) and h.core.phase is Phase.ACTIVE


def test_messages_too_large_for_a_new_server_fail_locally() -> None:
    """After a reconnect to a server with a smaller max_frame, what no longer fits fails."""
    h = Harness()
    big = h.message(size=5000)
    h.core.send(big)
    out = h.connect(welcome(max_frame=4096))
    failed = out[-1]
    assert isinstance(failed, SendFailed) and isinstance(failed.error, LocalProtocolError)
    assert h.frames() == []
    late = h.message(size=5000)
    h.core.send(late)
    assert isinstance(late.error, LocalProtocolError)


def test_frame_too_large_drops_the_largest_message_in_flight() -> None:
    """The server closes for frame_too_large: the largest message fails, the rest retry."""
    h = Harness()
    h.connect()
    small, large = h.message("s"), h.message(size=100)
    h.core.send(small)
    h.core.send(large)
    h.frames()
    h.feed(protocol.ErrorFrame("frame_too_large", "too long"))
    assert isinstance(large.error, RemoteProtocolError) and small.error is None
    assert isinstance(h.outputs()[-1], Reconnecting)


# --------------------------------------------------------------------------- gaps
def test_gap_in_room_numbers_is_reported_once_nothing_is_in_flight() -> None:
    """Messages 11 and 14 with nothing of ours in flight: 12 and 13 were missed."""
    h = Harness()
    h.connect()
    h.feed(protocol.Message("bob", "a", 11, "t"), protocol.Message("bob", "b", 14, "t"))
    out = h.outputs()
    assert out[-1] == Gap(11, 15, 2, room="lobby")


def test_gap_after_an_outage_follows_the_connected_event() -> None:
    """What was numbered while the link was down shows up right after Connected."""
    h = Harness()
    h.connect(welcome(10))
    h.core.connection_lost("reset", h.now)
    h.outputs()
    out = h.connect(welcome(13))
    assert isinstance(out[0], Connected) and out[1] == Gap(10, 14, 3, room="lobby")


# --------------------------------------------------------------------------- heartbeats
def test_idle_link_pings_after_one_interval_and_dies_after_three() -> None:
    """No frames from the server: a ping after 1 interval, dead after 3."""
    h = Harness()
    h.connect(welcome(heartbeat=1.0))
    start = h.now
    assert h.core.next_deadline() == start + 1.0
    h.advance(1.0)
    assert h.frames() == [{"type": "ping"}]
    h.core.data_sent(h.now, sent=15, all_sent=True)
    h.to_deadline()
    assert h.frames() == [{"type": "ping"}]
    assert h.now == start + 2.0
    h.core.data_sent(h.now, sent=15, all_sent=True)
    h.to_deadline()
    assert h.now == start + DEAD_AFTER_INTERVALS * 1.0
    out = h.outputs()
    assert [type(o) for o in out] == [CloseLink, Disconnected, Reconnecting]
    lost = out[1]
    assert isinstance(lost, Disconnected) and "heartbeat" in lost.reason


def test_frames_from_the_server_keep_the_link_alive() -> None:
    """Every frame received moves the dead-link deadline."""
    h = Harness()
    h.connect(welcome(heartbeat=1.0))
    for _ in range(10):
        h.advance(0.9)
        h.feed(protocol.Pong())
        h.core.data_to_send()
        h.core.data_sent(h.now, sent=15, all_sent=True)
    assert h.core.phase is Phase.ACTIVE
    assert not [o for o in h.outputs() if isinstance(o, Disconnected)]


def test_a_blocked_write_is_not_a_past_deadline() -> None:
    """While the socket does not take our bytes, a due ping is not a deadline (no busy
    loop): the next deadline is the dead link's."""
    h = Harness()
    h.connect(welcome(heartbeat=1.0))
    start = h.now
    h.core.data_sent(h.now, sent=0, all_sent=False)
    h.advance(1.5)
    assert h.frames() == []
    deadline = h.core.next_deadline()
    assert deadline == start + DEAD_AFTER_INTERVALS * 1.0 and deadline > h.now


def test_own_heartbeat_overrides_the_servers() -> None:
    """heartbeat= sets the ping interval whatever the welcome says."""
    h = Harness(heartbeat=0.1)
    h.connect(welcome(heartbeat=20.0))
    assert h.core.next_deadline() == pytest.approx(h.now + 0.1)


def test_server_ping_is_answered() -> None:
    """A ping from the server gets a pong."""
    h = Harness()
    h.connect()
    h.feed(protocol.Ping())
    assert h.frames() == [{"type": "pong"}]


# --------------------------------------------------------------------------- bad input
def test_unknown_and_malformed_frames_are_ignored() -> None:
    """Later protocol versions' frames and garbage lines do not break the link."""
    h = Harness()
    h.connect()
    h.core.receive_data(b'{"type":"future"}\nnot json\n\n', h.now)
    assert h.outputs() == [] and h.core.phase is Phase.ACTIVE


def test_over_long_line_from_the_server_drops_the_link() -> None:
    """A line over the decoder limit is bad data: reconnect."""
    h = Harness()
    h.connect(welcome(max_frame=100))
    h.core.receive_data(b"x" * 5000, h.now)
    out = h.outputs()
    lost = out[1]
    assert isinstance(lost, Disconnected) and "bad data" in lost.reason


def test_illegal_driver_input_is_a_local_error() -> None:
    """connection_made outside an attempt is a driver bug, refused by the table."""
    h = Harness()
    with pytest.raises(LocalProtocolError):
        h.core.connection_made(h.now)


# --------------------------------------------------------------------------- closing
def test_close_says_bye_and_waits_for_the_servers() -> None:
    """close() on a live link sends bye; the server's bye ends it with Closed(None)."""
    h = Harness()
    h.connect()
    msg = h.message()
    h.core.send(msg)
    h.frames()
    h.core.close(h.now)
    assert h.frames() == [{"type": "bye"}]
    assert h.core.phase is Phase.CLOSING
    h.feed(protocol.Bye())
    out = h.outputs()
    assert [type(o) for o in out] == [CloseLink, Closed]
    assert out[-1] == Closed("closed", None)
    assert isinstance(msg.error, ClientClosed)


def test_close_gives_up_waiting_after_close_timeout() -> None:
    """A server that never answers the bye: closed after close_timeout."""
    h = Harness(close_timeout=2.0)
    h.connect()
    h.core.close(h.now)
    h.frames()
    h.advance(1.9)
    assert h.outputs() == []
    h.advance(0.1)
    assert h.outputs()[-1] == Closed("closed", None)


def test_close_while_waiting_or_before_start_is_immediate() -> None:
    """Not connected: close ends at once, and queued messages fail with ClientClosed."""
    h = Harness()
    msg = h.message()
    h.core.send(msg)
    h.core.close(h.now)
    assert h.outputs() == [Closed("closed", None)]
    assert isinstance(msg.error, ClientClosed)
    waiting = Harness()
    waiting.core.start(waiting.now)
    waiting.core.connection_lost("connection refused", waiting.now)
    waiting.outputs()
    waiting.core.close(waiting.now)
    assert waiting.outputs() == [Closed("closed", None)]
    after = waiting.message()
    waiting.core.send(after)
    assert isinstance(after.error, ClientClosed)


def test_loss_while_closing_is_a_clean_close() -> None:
    """The server hangs up instead of answering bye: still a plain close."""
    h = Harness()
    h.connect()
    h.core.close(h.now)
    h.core.connection_lost("the server closed the connection", h.now)
    assert h.outputs()[-1] == Closed("closed", None)


# --------------------------------------------------------------------------- purity
