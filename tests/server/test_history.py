"""History paging over real TLS, as IRCv3 CHATHISTORY BEFORE/AFTER/LATEST: pages
ascending, ``more`` exact, at most 500 a request, ``oldest``/``latest`` the log's own
bounds; ranges that do not exist get defined empty answers; bad limits are bad_frame
and the session goes on; messages pruned by --history-max are gone, from history and
from resume replays alike."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import (
    MakeServer,
    RunningServer,
    WireClient,
    publish,
    read_replay,
    stop_server,
    wait_for,
)


def history(wire: WireClient, **request: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One request; its history_msg frames and its history_end."""
    wire.send({"type": "history", **request})
    msgs: list[dict[str, Any]] = []
    while True:
        frame = wire.recv()
        if frame["type"] == "history_end":
            return msgs, frame
        if frame["type"] in ("msg", "join", "leave"):
            continue  # live traffic may come between the pages
        assert frame["type"] == "history_msg", frame
        msgs.append(frame)


def seqs(msgs: list[dict[str, Any]]) -> list[int]:
    return [m["seq"] for m in msgs]


def room_of(make_server: MakeServer, count: int, **config: Any
            ) -> tuple[RunningServer, WireClient]:
    """A server whose room holds ``count`` messages "m0".. by alice; bob's wire."""
    running = make_server(msg_rate=0, **config)
    alice, _ = running.user("alice")
    if count:
        publish(alice, [f"m{i}" for i in range(count)])
    bob, _ = running.user("bob")
    return running, bob


# --------------------------------------------------------------------------- paging
def test_latest_before_and_after_pages(make_server: MakeServer) -> None:
    _, bob = room_of(make_server, 1200)
    msgs, end = history(bob, id="latest", limit=3)
    assert seqs(msgs) == [1198, 1199, 1200]
    assert end == {"type": "history_end", "room": "lobby", "id": "latest", "count": 3, "more": True,
                   "oldest": 1, "latest": 1200}
    assert msgs[0] == {"type": "history_msg", "room": "lobby", "id": "latest", "from": "alice",
                       "body": "m1197", "seq": 1198, "ts": msgs[0]["ts"]}
    assert msgs[0]["ts"].endswith("Z")

    msgs, end = history(bob, id=7, before=100, limit=10)
    assert seqs(msgs) == list(range(90, 100)) and end["more"] is True and end["id"] == 7
    msgs, end = history(bob, id=8, after=100, limit=10)
    assert seqs(msgs) == list(range(101, 111)) and end["more"] is True
    assert [m["body"] for m in msgs] == [f"m{i}" for i in range(100, 110)]

    msgs, end = history(bob, before=4, limit=10)  # fewer than asked: the start
    assert seqs(msgs) == [1, 2, 3] and end["more"] is False and end["count"] == 3
    msgs, end = history(bob, after=1195, limit=10)  # fewer than asked: the end
    assert seqs(msgs) == list(range(1196, 1201)) and end["more"] is False
    msgs, end = history(bob, before=11, limit=10)  # exactly the rest: no more
    assert seqs(msgs) == list(range(1, 11)) and end["more"] is False
    msgs, end = history(bob, after=1190, limit=10)
    assert seqs(msgs) == list(range(1191, 1201)) and end["more"] is False


def test_paging_backwards_and_forwards_covers_the_log_once(make_server: MakeServer) -> None:
    """500 at most per request; walking either way sees every message exactly once."""
    _, bob = room_of(make_server, 1200)
    msgs, end = history(bob, limit=500)
    pages = 1
    back = seqs(msgs)
    while end["more"]:
        assert end["count"] == 500
        msgs, end = history(bob, before=msgs[0]["seq"], limit=500)
        back = seqs(msgs) + back
        pages += 1
    assert back == list(range(1, 1201)) and pages == 3
    forward: list[int] = []
    after = 0
    while True:
        msgs, end = history(bob, after=after, limit=500)
        forward += seqs(msgs)
        if not end["more"]:
            break
        after = msgs[-1]["seq"]
    assert forward == list(range(1, 1201))


def test_history_shows_only_acknowledged_messages(make_server: MakeServer) -> None:
    """Whatever a history reply shows, its sender was acknowledged; latest is the last
    acknowledged seq, and a message acked right before the request is in it."""
    running, bob = room_of(make_server, 10)
    alice, _ = running.user("alice")
    (ack,) = publish(alice, ["just now"])
    msgs, end = history(bob, limit=5)
    assert end["latest"] == ack["seq"] == 11
    assert msgs[-1]["body"] == "just now" and msgs[-1]["seq"] == 11


def test_an_empty_room_has_an_empty_history(make_server: MakeServer) -> None:
    _, bob = room_of(make_server, 0)
    for request in ({}, {"before": 1}, {"after": 0}, {"before": 99}):
        msgs, end = history(bob, id="e", **request)
        assert msgs == []
        assert end == {"type": "history_end", "room": "lobby", "id": "e", "count": 0, "more": False,
                       "oldest": None, "latest": 0}


@pytest.mark.parametrize(("request_", "expected", "more"), [
    ({"before": 1}, [], False),
    ({"before": 0}, [], False),
    ({"after": 30}, [], False),
    ({"after": 31}, [], False),
    ({"after": 1000}, [], False),
    ({"before": 31, "limit": 3}, [28, 29, 30], True),
    ({"before": 1000, "limit": 3}, [28, 29, 30], True),  # beyond the latest: the latest
    ({"after": 0, "limit": 30}, list(range(1, 31)), False),
])
def test_ranges_that_do_not_exist_get_defined_answers(
        make_server: MakeServer, request_: dict[str, int], expected: list[int],
        more: bool) -> None:
    _, bob = room_of(make_server, 30)
    msgs, end = history(bob, id="r", **request_)
    assert seqs(msgs) == expected
    assert end == {"type": "history_end", "room": "lobby",
                   "id": "r", "count": len(expected), "more": more,
                   "oldest": 1, "latest": 30}


@pytest.mark.parametrize("request_", [
    {"limit": 0}, {"limit": 501}, {"limit": -1}, {"limit": "5"}, {"limit": 2.5},
    {"limit": True}, {"limit": None}, {"before": -1}, {"before": "9"}, {"after": 1.0},
    {"before": 5, "after": 1}, {"after": 2**53},
], ids=repr)
def test_a_bad_history_request_is_bad_frame_and_the_session_goes_on(
        make_server: MakeServer, request_: dict[str, Any]) -> None:
    _, bob = room_of(make_server, 5)
    bob.send({"type": "history", "id": "bad", **request_})
    error = bob.expect("error")
    assert (error["code"], error["id"]) == ("bad_frame", "bad"), error
    msgs, end = history(bob, id="good", limit=2)  # still served
    assert seqs(msgs) == [4, 5] and end["id"] == "good"


def test_the_limit_defaults_to_50_and_500_is_allowed(make_server: MakeServer) -> None:
    _, bob = room_of(make_server, 600)
    msgs, end = history(bob)
    assert seqs(msgs) == list(range(551, 601)) and end["more"] is True
    msgs, end = history(bob, limit=500)
    assert seqs(msgs) == list(range(101, 601)) and end["count"] == 500 and end["more"]


# --------------------------------------------------------------------------- retention
@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_messages_pruned_by_history_max_are_gone_from_history_and_resume(
        make_server: MakeServer, store: str) -> None:
    """--history-max 10 and 30 messages: history holds 21..30 only; a member resuming
    from 5 is told 6..20 are missing and gets 21..30 replayed, nothing older."""
    running = make_server(msg_rate=0, store=store, history_max=10)
    bob, welcome = running.user("bob", client_id="b")
    bob.close()
    alice, _ = running.user("alice")
    publish(alice, [f"m{i}" for i in range(30)])
    log = running.server.room.log
    # SQLite prunes in the background, every 5 s.
    wait_for(lambda: log.oldest_seq("lobby") == 21, timeout=10, what="retention to run")

    probe, _ = running.user("carol")
    msgs, end = history(probe, after=0, limit=50)
    assert seqs(msgs) == list(range(21, 31))
    assert (end["oldest"], end["latest"], end["more"]) == (21, 30, False)
    msgs, end = history(probe, before=21, limit=50)
    assert msgs == [] and end["more"] is False

    back, _ = running.login(running.add_user("bob"), client_id="b",
                            resume=(welcome["epoch"], 5))
    replayed, caught_up = read_replay(back)
    assert caught_up == {"type": "caught_up", "room": "lobby", "seq": 30, "replayed": 10,
                         "missing_after": 5, "missing_before": 21}, (
        f"replayed {seqs(replayed)[:3]}...: pruned messages came back from the room's cache")
    assert seqs(replayed) == list(range(21, 31))


def test_after_a_restart_a_resume_from_before_the_pruned_messages_is_told_the_gap(
        make_server: MakeServer, tmp_path: Any) -> None:
    """SQLite, --history-max 10, pruned, restarted (the room's memory is empty): the
    resume from 5 reads the log, replays 21..30 and names 6..20 as missing."""
    data = tmp_path / "kept"
    first = make_server(msg_rate=0, history_max=10, data_dir=data)
    bob, welcome = first.user("bob", client_id="b")
    bob.close()
    alice, _ = first.user("alice")
    publish(alice, [f"m{i}" for i in range(30)])
    log = first.server.room.log
    wait_for(lambda: log.oldest_seq("lobby") == 21, timeout=10, what="retention to run")
    stop_server(first)

    second = make_server(msg_rate=0, history_max=10, data_dir=data)
    back, _ = second.login(second.add_user("bob"), client_id="b",
                           resume=(welcome["epoch"], 5))
    replayed, caught_up = read_replay(back)
    assert seqs(replayed) == list(range(21, 31))
    assert [m["body"] for m in replayed] == [f"m{i}" for i in range(20, 30)]
    assert caught_up == {"type": "caught_up", "room": "lobby", "seq": 30, "replayed": 10,
                         "missing_after": 5, "missing_before": 21}
