"""Resume over real TLS: a member who was away gets exactly what it missed, in order,
then ``caught_up``, then live traffic; positions the log cannot serve are answered
exactly; malformed resumes are refused; and a replay never makes the server buffer
more than the slow-consumer budget, however much was missed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securechat.server.replay import LOW_WATER, PAGE_BYTES
from securechat.server.session import Session, State
from tests.support import (
    OTHERS,
    LogRecords,
    MakeServer,
    RunningServer,
    WireClient,
    error_codes,
    publish,
    read_replay,
    stop_server,
    wait_for,
)

#: The most a replay may queue for one session by itself: read ahead to LOW_WATER,
#: plus one page, plus one frame's overshoot.
READ_AHEAD = LOW_WATER + PAGE_BYTES + 4096


def backlog(body_size: int) -> int:
    """How many messages of ``body_size`` outgrow what the kernel can hold for a client
    with a 4 KiB receive buffer (the server's largest send buffer and the client's),
    plus the replay's read ahead: a client that reads none of them stalls the replay."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        wmem_max = 4 * 1024 * 1024
    return (wmem_max + 64 * 1024 + READ_AHEAD) // body_size + 500


def stalled(session: Session) -> bool:
    """The replay waits on the client: its socket is full and the read ahead queued."""
    replay = session.replay
    return (session.write_blocked and replay is not None and not replay.done
            and session.out.size >= LOW_WATER)


def away(running: RunningServer, name: str = "bob") -> tuple[str, int]:
    """``name`` logs in and leaves at once; its (epoch, seq) position."""
    wire, welcome = running.user(name, client_id=f"{name}-1")
    wire.close()
    return welcome["epoch"], welcome["seq"]


def resume_login(running: RunningServer, name: str, resume: tuple[str, int], *,
                 rcvbuf: int | None = None) -> tuple[WireClient, dict[str, Any]]:
    return running.login(running.add_user(name), client_id=f"{name}-1", resume=resume,
                         rcvbuf=rcvbuf)


def auth_frames(running: RunningServer, name: str, **fields: Any) -> list[dict[str, Any]]:
    """Send an auth frame with ``fields`` as given (any JSON); every frame until close."""
    wire = running.tls_connect()
    wire.send({"type": "auth", "token": running.add_user(name), **fields})
    return wire.expect_closed()


class Peak:
    """The most a session held at once (send buffer; live frames held by its replay),
    sampled by ``wait_for`` predicates while the test waits on an event."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.out = 0
        self.held = 0

    def sample(self) -> None:
        s = self.session
        self.out = max(self.out, s.out.size)
        replay = s.replay
        if replay is not None:
            self.held = max(self.held, replay.held_bytes)

    def until(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        def check() -> bool:
            self.sample()
            return bool(predicate())
        wait_for(check, timeout, what)


# --------------------------------------------------------------------------- catching up
@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_a_member_away_for_1000_messages_gets_exactly_those_then_live(
        make_server: MakeServer, store: str) -> None:
    running = make_server(msg_rate=0, store=store)
    position = away(running)
    alice, _ = running.user("alice")
    bodies = [f"missed {i}" for i in range(1000)]
    publish(alice, bodies)

    bob, welcome = resume_login(running, "bob", position)
    assert welcome["seq"] == 1000 and welcome["epoch"] == position[0]
    replayed, caught_up = read_replay(bob)
    assert [m["seq"] for m in replayed] == list(range(1, 1001))
    assert [m["body"] for m in replayed] == bodies
    assert all(m["from"] == "alice" and m["ts"] for m in replayed)
    assert caught_up == {"type": "caught_up", "room": "lobby",
                         "seq": 1000, "replayed": 1000}  # no gap
    publish(alice, ["live"])
    live = bob.expect("msg")
    assert (live["seq"], live["body"]) == (1001, "live")


def test_a_replay_after_a_restart_comes_from_the_log_on_disk(make_server: MakeServer,
                                                             tmp_path: Any) -> None:
    """Nothing of it in memory any more: 1200 messages read back from SQLite, in pages."""
    data = tmp_path / "kept"
    first = make_server(msg_rate=0, data_dir=data)
    position = away(first)
    alice, _ = first.user("alice")
    publish(alice, [f"m{i}" for i in range(1200)])
    stop_server(first)
    second = make_server(msg_rate=0, data_dir=data)
    bob, _ = resume_login(second, "bob", position)
    replayed, caught_up = read_replay(bob)
    assert [m["body"] for m in replayed] == [f"m{i}" for i in range(1200)]
    assert [m["seq"] for m in replayed] == list(range(1, 1201))
    assert caught_up == {"type": "caught_up", "room": "lobby", "seq": 1200, "replayed": 1200}


def test_a_resume_at_the_latest_position_is_caught_up_at_once(
        make_server: MakeServer) -> None:
    running = make_server(msg_rate=0)
    alice, welcome = running.user("alice")
    publish(alice, ["a", "b"])
    bob, _ = resume_login(running, "bob", (welcome["epoch"], 2))
    assert bob.recv() == {"type": "caught_up", "room": "lobby", "seq": 2, "replayed": 0}
    publish(alice, ["c"])
    assert bob.expect("msg")["seq"] == 3


@pytest.mark.parametrize("where", ["another epoch", "beyond the latest seq"])
def test_a_position_this_log_never_had_is_reset(make_server: MakeServer, where: str) -> None:
    running = make_server(msg_rate=0)
    alice, welcome = running.user("alice")
    publish(alice, ["a", "b", "c"])
    resume = ("0123456789abcdef", 2) if where == "another epoch" else (welcome["epoch"], 4)
    bob, _ = resume_login(running, "bob", resume)
    assert bob.recv() == {"type": "caught_up", "room": "lobby",
                          "seq": 3, "replayed": 0, "reset": True}
    publish(alice, ["d"])
    assert bob.expect("msg")["seq"] == 4  # and live traffic follows


def test_without_resume_there_is_no_caught_up(make_server: MakeServer) -> None:
    """A v1 client that never asks for a resume sees no new frame type."""
    running = make_server(msg_rate=0)
    alice, _ = running.user("alice")
    publish(alice, ["before"])
    bob, welcome = running.user("bob", client_id="b")
    assert welcome["protocol"] == 3 and welcome["seq"] == 1 and welcome["epoch"]
    publish(alice, ["after"])
    assert bob.recv()["type"] == "msg"


# --------------------------------------------------------------------------- malformed
@pytest.mark.parametrize("resume", [
    "e:1", ["e", 1], 7, {}, {"seq": 1}, {"epoch": "e"}, {"epoch": "", "seq": 1},
    {"epoch": 12, "seq": 1}, {"epoch": "x" * 65, "seq": 1}, {"epoch": "has space", "seq": 1},
    {"epoch": "e", "seq": -1}, {"epoch": "e", "seq": "1"}, {"epoch": "e", "seq": 1.5},
    {"epoch": "e", "seq": True}, {"epoch": "e", "seq": 2**53}, {"epoch": "e", "seq": None},
], ids=lambda value: repr(value)[:30])
def test_a_malformed_resume_is_bad_frame_and_closes(make_server: MakeServer,
                                                    resume: Any) -> None:
    running = make_server()
    frames = auth_frames(running, "bob", resume=resume)
    assert error_codes(frames) == ["bad_frame"] and len(frames) == 1, frames
    assert "resume" in frames[0]["message"]


@pytest.mark.parametrize("client", ["", "x" * 65, "two words", 5, ["c"], "é"],
                         ids=lambda value: repr(value)[:20])
def test_a_malformed_client_id_is_bad_frame_and_closes(make_server: MakeServer,
                                                       client: Any) -> None:
    running = make_server()
    frames = auth_frames(running, "bob", client=client)
    assert error_codes(frames) == ["bad_frame"] and len(frames) == 1, frames


# --------------------------------------------------------------------------- under pressure
def test_a_slow_reader_catching_up_beside_two_publishers_is_not_cut_off(
        make_server: MakeServer) -> None:
    """bob reads his 2000-message replay a few frames at a time while alice and carol
    keep publishing; their messages wait (held, within --max-pending) and follow
    caught_up in the order they were acknowledged; bob is never cut off."""
    max_pending = 512 * 1024
    running = make_server(msg_rate=0, max_pending=max_pending)
    position = away(running)
    alice, _ = running.user("alice")
    carol, _ = running.user("carol")
    publish(alice, ["x" * 200] * 2000)
    bob, _ = resume_login(running, "bob", position, rcvbuf=16384)
    session = running.session_of("bob")
    assert session is not None
    peak = Peak(session)
    replayed: list[int] = []
    live_sent: list[tuple[int, str]] = []
    frame = bob.recv()
    while frame["type"] == "msg":
        replayed.append(frame["seq"])
        peak.sample()
        if len(replayed) % 20 == 0:
            for who, wire in (("alice", alice), ("carol", carol)):
                body = f"{who} live {len(live_sent)}"
                (ack,) = publish(wire, [body], [len(live_sent)])
                live_sent.append((ack["seq"], body))
        frame = bob.recv()
    assert frame == {"type": "caught_up", "room": "lobby", "seq": 2000, "replayed": 2000}
    assert replayed == list(range(1, 2001))
    assert len(live_sent) == 200
    live = [bob.expect("msg") for _ in live_sent]
    assert [(m["seq"], m["body"]) for m in live] == live_sent
    assert [s for s, _ in live_sent] == list(range(2001, 2201))
    assert peak.out + peak.held <= max_pending, (peak.out, peak.held)
    assert session.state is State.ACTIVE


def test_a_client_that_reads_nothing_of_a_big_replay_is_cut_not_buffered(
        make_server: MakeServer, server_log: LogRecords) -> None:
    """bob resumes megabytes behind and reads nothing; the server queues at most its read
    ahead for him, not the backlog; live traffic held for him passes --max-pending and
    he is cut with slow_consumer; his queue is freed."""
    max_pending = 256 * 1024
    running = make_server(msg_rate=0, max_pending=max_pending)
    position = away(running)
    alice, _ = running.user("alice")
    count = backlog(1000)
    publish(alice, ["y" * 1000] * count)
    bob, _ = resume_login(running, "bob", position, rcvbuf=4096)
    session = running.session_of("bob")
    assert session is not None
    peak = Peak(session)
    peak.until(lambda: stalled(session), what="the replay to fill bob's socket")
    for start in range(0, 400, 50):
        publish(alice, ["z" * 1000] * 50, list(range(start, start + 50)))
        peak.sample()
        if session.state is not State.ACTIVE:
            break
    peak.until(lambda: session.state is not State.ACTIVE, what="bob to be cut")
    frames = bob.expect_closed()  # at once: the error frame lingers 1 s behind the rest
    assert error_codes(frames) == ["slow_consumer"], frames[-3:]
    seqs = [f["seq"] for f in frames if f["type"] == "msg"]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < count
    assert not [f for f in frames if f["type"] == "caught_up"]
    assert peak.out <= READ_AHEAD, peak.out
    assert peak.held <= max_pending, peak.held
    (cut,) = server_log.named("slow_consumer")
    fields = cut.__dict__["fields"]
    assert fields["user"] == "bob" and "while catching up" in fields["detail"]
    wait_for(lambda: running.server.stats()["queued_bytes"] == 0, what="queues freed")


def test_a_client_that_stops_reading_during_a_replay_times_out(
        make_server: MakeServer) -> None:
    """No live traffic at all: the replay waits on bob's socket (never more than its
    read ahead queued), and --write-timeout cuts him with slow_consumer."""
    running = make_server(msg_rate=0, write_timeout=0.5)
    position = away(running)
    alice, _ = running.user("alice")
    publish(alice, ["w" * 1000] * backlog(1000))
    bob, _ = resume_login(running, "bob", position, rcvbuf=4096)
    session = running.session_of("bob")
    assert session is not None
    peak = Peak(session)
    peak.until(lambda: session.state is not State.ACTIVE, what="bob to time out")
    frames = bob.expect_closed()
    assert error_codes(frames) == ["slow_consumer"], frames[-3:]
    assert "no write progress" in frames[-1]["message"]
    assert peak.out <= READ_AHEAD, peak.out
    wait_for(lambda: running.server.stats()["queued_bytes"] == 0, what="queues freed")


def test_the_replay_read_ahead_does_not_spend_a_small_max_pending(
        make_server: MakeServer) -> None:
    """With --max-pending 64 KiB, bob pauses while his replay is under way and one
    26-byte live message arrives: far within his budget, so he must not be cut; the
    server's own read ahead (up to LOW_WATER + a page) is not bob being slow."""
    running = make_server(msg_rate=0, max_pending=64 * 1024)
    position = away(running)
    alice, _ = running.user("alice")
    count = backlog(500)
    publish(alice, ["v" * 500] * count)
    bob, _ = resume_login(running, "bob", position, rcvbuf=4096)
    session = running.session_of("bob")
    assert session is not None
    wait_for(lambda: stalled(session), what="bob's socket to fill")
    publish(alice, ["one small live message"])
    frames = [bob.recv()]
    while frames[-1]["type"] == "msg":
        frames.append(bob.recv())
    assert frames[-1]["type"] == "caught_up", (
        f"cut off after {len(frames) - 1} of {count} replayed messages with "
        f"{frames[-1]}: the replay's own read ahead (LOW_WATER + PAGE_BYTES = "
        f"{LOW_WATER + PAGE_BYTES} bytes) counts against --max-pending")
    assert frames[-1]["replayed"] == count == len(frames) - 1
    assert bob.expect("msg")["body"] == "one small live message"


def test_publishers_are_not_slowed_by_a_replay(make_server: MakeServer) -> None:
    """While bob's replay waits on his full socket, alice's messages are acknowledged
    at once (the replay never blocks the room)."""
    running = make_server(msg_rate=0)
    position = away(running)
    alice, _ = running.user("alice")
    count = backlog(1000)
    publish(alice, ["u" * 1000] * count)
    _bob, _ = resume_login(running, "bob", position, rcvbuf=4096)  # reads nothing
    session = running.session_of("bob")
    assert session is not None
    wait_for(lambda: stalled(session), what="bob's socket to fill")
    acks = publish(alice, ["during"] * 100, [f"d{i}" for i in range(100)], timeout=2.0)
    assert [a["seq"] for a in acks] == list(range(count + 1, count + 101))
    assert stalled(session)  # bob's replay is still waiting on him
    alice.send({"type": "ping"})
    assert alice.expect("pong", skip=OTHERS) == {"type": "pong"}
