"""ResendTable, the pure part of resend recognition: ids per (user, client), kept for
a window, capped per client, at most max_clients clients (least recently used out
first), forgotten when refused, swept when stale. Time is passed in."""

from __future__ import annotations

from securechat.rooms.resends import PENDING, ResendTable


def test_an_id_is_pending_until_stored_then_has_its_seq() -> None:
    table = ResendTable()
    assert table.lookup("alice", "c1", "m1", 0.0) is None
    table.take("alice", "c1", "m1", 0.0)
    assert table.lookup("alice", "c1", "m1", 0.1) == PENDING
    table.stored("alice", "c1", "m1", 42)
    assert table.lookup("alice", "c1", "m1", 0.2) == 42
    assert len(table) == 1


def test_ids_are_scoped_to_user_and_client_and_typed() -> None:
    table = ResendTable()
    table.take("alice", "c1", 1, 0.0, seq=1)
    assert table.lookup("alice", "c2", 1, 0.0) is None  # another device
    assert table.lookup("bob", "c1", 1, 0.0) is None  # another user, same client name
    assert table.lookup("alice", "c1", "1", 0.0) is None  # "1" is not 1
    assert table.lookup("alice", "c1", 1, 0.0) == 1


def test_an_id_expires_after_the_window_from_when_it_was_taken() -> None:
    table = ResendTable(window=10.0)
    table.take("alice", "c1", "m1", 100.0)
    table.stored("alice", "c1", "m1", 7)  # storing later does not restart the window
    assert table.lookup("alice", "c1", "m1", 110.0) == 7  # the window's last instant
    assert table.lookup("alice", "c1", "m1", 110.001) is None
    assert table.lookup("alice", "c1", "m1", 105.0) is None  # gone for good
    assert len(table) == 0


def test_expiry_keeps_the_younger_ids_of_a_client() -> None:
    table = ResendTable(window=10.0)
    for i, at in enumerate((0.0, 4.0, 8.0)):
        table.take("alice", "c1", i, at, seq=i + 1)
    assert table.lookup("alice", "c1", 2, 12.0) == 3
    assert [table.lookup("alice", "c1", i, 12.0) for i in range(3)] == [None, 2, 3]


def test_each_client_keeps_at_most_per_client_ids_oldest_out_first() -> None:
    table = ResendTable(per_client=3)
    for i in range(5):
        table.take("alice", "chatty", i, float(i), seq=i + 1)
    table.take("bob", "quiet", "only", 0.0, seq=100)
    assert [table.lookup("alice", "chatty", i, 5.0) for i in range(5)] == [None, None, 3, 4, 5]
    assert table.lookup("bob", "quiet", "only", 5.0) == 100  # not evicted by alice
    assert len(table) == 4


def test_taking_an_id_again_makes_it_the_youngest() -> None:
    table = ResendTable(per_client=2)
    table.take("alice", "c", "a", 0.0, seq=1)
    table.take("alice", "c", "b", 1.0, seq=2)
    table.take("alice", "c", "a", 2.0, seq=3)
    table.take("alice", "c", "c", 3.0, seq=4)
    assert [table.lookup("alice", "c", k, 3.0) for k in "abc"] == [3, None, 4]


def test_at_most_max_clients_the_least_recently_used_out_first() -> None:
    table = ResendTable(max_clients=2)
    table.take("alice", "c1", 1, 0.0, seq=1)
    table.take("alice", "c2", 1, 1.0, seq=2)
    table.take("alice", "c1", 2, 2.0, seq=3)  # c1 used again: c2 is now the oldest
    table.take("alice", "c3", 1, 3.0, seq=4)
    assert table.lookup("alice", "c2", 1, 3.0) is None
    assert table.lookup("alice", "c1", 1, 3.0) == 1
    assert table.lookup("alice", "c3", 1, 3.0) == 4
    assert len(table) == 3


def test_caps_below_one_mean_one() -> None:
    table = ResendTable(per_client=0, max_clients=0)
    assert (table.per_client, table.max_clients) == (1, 1)
    table.take("a", "c", 1, 0.0, seq=1)
    table.take("a", "c", 2, 0.0, seq=2)
    table.take("b", "c", 1, 0.0, seq=3)
    assert len(table) == 1 and table.lookup("b", "c", 1, 0.0) == 3


def test_forget_makes_a_refused_id_new_again() -> None:
    table = ResendTable()
    table.take("alice", "c1", "m1", 0.0)
    table.take("alice", "c1", "m2", 0.0, seq=5)
    table.forget("alice", "c1", "m1")
    assert table.lookup("alice", "c1", "m1", 0.0) is None
    assert table.lookup("alice", "c1", "m2", 0.0) == 5
    table.forget("alice", "c1", "m2")
    assert len(table) == 0
    table.forget("alice", "c1", "m2")  # twice, and unknown clients: no error
    table.forget("nobody", "c9", 1)
    table.stored("nobody", "c9", 1, 3)  # a stored() after forget() does not resurrect it
    assert table.lookup("nobody", "c9", 1, 0.0) is None


def test_a_forgotten_client_frees_its_slot() -> None:
    table = ResendTable(max_clients=2)
    table.take("a", "c1", 1, 0.0)
    table.forget("a", "c1", 1)
    table.take("a", "c2", 1, 1.0, seq=2)
    table.take("a", "c3", 1, 2.0, seq=3)
    assert table.lookup("a", "c2", 1, 2.0) == 2 and table.lookup("a", "c3", 1, 2.0) == 3


def test_sweep_drops_stale_clients_and_keeps_recent_ones() -> None:
    table = ResendTable(window=5.0)
    table.take("alice", "gone", 1, 0.0, seq=1)
    table.take("bob", "gone too", 1, 1.0, seq=2)
    table.take("carol", "here", 1, 2.0, seq=3)
    table.take("carol", "here", 2, 9.0, seq=4)
    table.sweep(10.0)
    assert len(table) == 1
    assert table.lookup("carol", "here", 2, 10.0) == 4
    assert table.lookup("alice", "gone", 1, 10.0) is None
    assert table.lookup("bob", "gone too", 1, 10.0) is None
    # Swept clients free their slots: with max_clients 2, "new" survives "newer".
    small = ResendTable(window=5.0, max_clients=2)
    small.take("x", "old", 1, 0.0, seq=1)
    small.take("y", "new", 1, 8.0, seq=2)
    small.sweep(10.0)
    small.take("z", "newer", 1, 10.0, seq=3)
    assert small.lookup("y", "new", 1, 10.0) == 2 and small.lookup("z", "newer", 1, 10.0) == 3


def test_sweep_stops_at_the_first_recent_client_and_repeats_harmlessly() -> None:
    table = ResendTable(window=5.0)
    for i in range(10):
        table.take("u", f"c{i}", 1, float(i), seq=i)
    table.sweep(9.0)
    assert len(table) == 10 - 4  # c0..c3 were taken more than 5 s before 9.0
    table.sweep(9.0)
    assert len(table) == 6
