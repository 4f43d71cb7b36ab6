"""securechat.Client over a node whose Redis lost its data: the client is told to come
back (bye store_reset), resumes, and reports the new numbering (Gap restarted) at
once, then goes on sending and receiving: nothing typed is lost."""

from __future__ import annotations

import pytest

from securechat.client import Connected, Gap, Reconnecting
from securechat.protocol import Message
from tests.client_support import ClientPool, next_of
from tests.redis.conftest import Nodes
from tests.redis.test_faults import publish_until_acked
from tests.redis.test_nodes import room_frames
from tests.redis_support import RedisServer, user_everywhere
from tests.support import publish

pytest_plugins = ["tests.client_support"]
pytestmark = pytest.mark.timeout(40)


@pytest.mark.parametrize("redis", [False], indirect=True)
def test_a_client_learns_the_new_epoch_and_goes_on(nodes: Nodes, redis: RedisServer,
                                                   clients: ClientPool) -> None:
    (a,) = nodes(1)
    ta, tb = user_everywhere([a], "alice"), user_everywhere([a], "bob")
    alice = clients.make(a.port, ta, client_id="alice-laptop")
    first = next_of(alice, Connected)
    bob, _ = a.login(tb)
    publish(bob, ["one", "two"])
    assert next_of(alice, Message, where=lambda m: m.body == "two").seq == 2 + first.welcome.seq
    redis.restart()  # no persistence: every room's log is gone
    ack, _ = publish_until_acked(bob, "fresh", list(range(10, 100)))
    fresh = next_of(alice, Message, where=lambda m: m.body == "fresh")
    assert fresh.seq == ack["seq"]  # numbering goes on for those who stay
    away = next_of(alice, Reconnecting)
    assert "store_reset" in away.reason and away.retry_after is not None
    assert away.retry_after <= 1.0
    back = next_of(alice, Connected)
    assert back.reconnect and back.welcome.epoch != first.welcome.epoch
    gap = next_of(alice, Gap)
    assert gap.restarted
    bob.expect("bye", skip=("ping", "msg", "ack", "join", "leave"))  # bob was told too
    bob_again, _ = a.login(tb)
    alice.send("still here")
    assert [m["body"] for m in room_frames(bob_again, 1)] == ["still here"]
