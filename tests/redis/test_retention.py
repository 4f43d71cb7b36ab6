"""The room's stream is trimmed to --history-max and --history-age, in the script."""

from __future__ import annotations

import threading

import pytest

from tests.redis.conftest import Nodes
from tests.support import publish, seconds

pytestmark = pytest.mark.timeout(30)


def test_history_max_keeps_the_newest_messages(nodes: Nodes) -> None:
    (a,) = nodes(1, history_max=5)
    alice, _ = a.login(a.add_user("alice"))
    acks = publish(alice, [f"m{i}" for i in range(8)])
    log = a.server.rooms.log
    assert log.oldest_seq("lobby") == acks[3]["seq"]
    assert [m.body for m in log.read_latest("lobby", 10)] == [f"m{i}" for i in range(3, 8)]
    assert log.last_seq("lobby") == acks[-1]["seq"]


def test_history_age_drops_old_messages_on_the_next_publish(nodes: Nodes) -> None:
    (a,) = nodes(1, history_age=seconds(0.3))
    alice, _ = a.login(a.add_user("alice"))
    old = publish(alice, ["old 1", "old 2"])
    threading.Event().wait(seconds(0.4))  # let them age past --history-age
    new = publish(alice, ["new"], [9])[0]
    log = a.server.rooms.log
    assert log.oldest_seq("lobby") == new["seq"] == old[-1]["seq"] + 1
    assert [m.body for m in log.read_after("lobby", 0, 10)] == ["new"]
