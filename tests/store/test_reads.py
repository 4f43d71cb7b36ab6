"""The read side both backends share, run against each: numbering, paging edges,
message id types and the resend ids, on a real SQLite file or in memory."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechat.store import MemoryLog, SQLiteLog, StoredMessage
from tests.store import Collector, item, open_started, store_all

Backend = tuple[MemoryLog | SQLiteLog, Collector | None]


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        log = MemoryLog(history_max=10_000)
        yield log, None
    else:
        sqlite_log, collector = open_started(tmp_path / "data")
        yield sqlite_log, collector
        sqlite_log.close()


def seqs(found: list[StoredMessage]) -> list[int]:
    return [m.seq for m in found]


def test_a_stored_message_reads_back_as_it_was_sent(backend: Backend) -> None:
    log, collector = backend
    [sent] = store_all(log, collector, [item("hello", sender="bob", client="phone",
                                             msg_id="m-1")])
    assert sent.seq == 1 and sent.ts and sent.stored_at > 0
    [back] = log.read_latest("lobby", 10)
    assert back == StoredMessage("lobby", 1, "bob", "phone", "m-1", "hello", sent.ts,
                                 sent.stored_at)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", back.ts)
    assert log.last_seq("lobby") == 1 and log.oldest_seq("lobby") == 1


def test_seq_counts_per_room_from_one(backend: Backend) -> None:
    log, collector = backend
    sent = store_all(log, collector, [item("a", room="r1"), item("b", room="r2"),
                                      item("c", room="r1")])
    assert [(p.room, p.seq) for p in sent] == [("r1", 1), ("r2", 1), ("r1", 2)]
    assert log.last_seq("r1") == 2 and log.last_seq("r2") == 1 and log.last_seq("r3") == 0
    assert [m.body for m in log.read_after("r1", 0, 10)] == ["a", "c"]


def test_an_empty_log_reads_nothing(backend: Backend) -> None:
    log, _ = backend
    assert log.last_seq("lobby") == 0
    assert log.oldest_seq("lobby") is None
    assert log.read_after("lobby", 0, 10) == []
    assert log.read_before("lobby", 1, 10) == []
    assert log.read_latest("lobby", 10) == []
    assert log.recent_ids("lobby", 0.0) == []


def test_int_and_str_message_ids_keep_their_type(backend: Backend) -> None:
    log, collector = backend
    store_all(log, collector, [item("a", msg_id=7), item("b", msg_id="7"),
                               item("c", msg_id=None, client=None),
                               item("d", msg_id=2**53 - 1)])
    found = log.read_after("lobby", 0, 10)
    assert [m.msg_id for m in found] == [7, "7", None, 2**53 - 1]
    assert [type(m.msg_id) for m in found] == [int, str, type(None), int]
    assert found[2].client is None


@pytest.mark.parametrize("limit", [1, 2, 7, 100, 500])
def test_paging_edges(backend: Backend, limit: int) -> None:
    log, collector = backend
    store_all(log, collector, [item(f"m{i}") for i in range(1, 301)])
    assert seqs(log.read_after("lobby", 0, limit)) == list(range(1, min(limit, 300) + 1))
    assert seqs(log.read_after("lobby", 295, limit)) == list(range(296, 296 + min(limit, 5)))
    assert log.read_after("lobby", 300, limit) == []
    assert log.read_after("lobby", 10_000, limit) == []
    assert log.read_before("lobby", 1, limit) == []
    assert seqs(log.read_before("lobby", 2, limit)) == [1]
    assert seqs(log.read_before("lobby", 151, limit)) == list(
        range(max(1, 151 - limit), 151))
    assert seqs(log.read_before("lobby", 10_000, limit)) == list(
        range(max(1, 301 - limit), 301))
    assert seqs(log.read_latest("lobby", limit)) == list(range(max(1, 301 - limit), 301))
    assert log.read_after("lobby", 0, 0) == [] and log.read_latest("lobby", 0) == []


def test_recent_ids_lists_only_messages_with_a_client_and_an_id(backend: Backend) -> None:
    log, collector = backend
    first = store_all(log, collector, [item("a", client="c1", msg_id=1),
                                       item("b", client=None, msg_id=2),
                                       item("c", client="c2", msg_id=None)])
    later = store_all(log, collector, [item("d", sender="bob", client="c3", msg_id="x"),
                                       item("e", client="c1", msg_id=2)])
    every = log.recent_ids("lobby", 0.0)
    assert every == [("alice", "c1", 1, 1, first[0].stored_at),
                     ("bob", "c3", "x", 4, later[0].stored_at),
                     ("alice", "c1", 2, 5, later[1].stored_at)]
    since = later[0].stored_at
    assert [row[3] for row in log.recent_ids("lobby", since)] == [
        s for s in (1, 4, 5) if every[[r[3] for r in every].index(s)][4] >= since]
    assert log.recent_ids("lobby", later[1].stored_at + 1) == []
    assert log.recent_ids("other", 0.0) == []


def test_stored_at_never_goes_back_within_a_room(backend: Backend) -> None:
    log, collector = backend
    sent = store_all(log, collector, [item(f"m{i}") for i in range(200)])
    stamps = [p.stored_at for p in sent]
    assert stamps == sorted(stamps)
