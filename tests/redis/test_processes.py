"""Three real ``securechat-server`` processes on one Redis: one order for all, and a
member of a node killed with SIGKILL resumes on another with no gap."""

from __future__ import annotations

import pytest

from tests.redis.test_nodes import burst, room_frames
from tests.redis_support import RedisServer
from tests.support import ServerProcesses, publish, read_replay

pytestmark = pytest.mark.timeout(40)


def test_three_server_processes_share_rooms(procs: ServerProcesses,
                                            redis: RedisServer) -> None:
    nodes = [procs.start("--store", redis.url) for _ in range(3)]
    assert all(f"store={redis.url}" in "\n".join(n.log_lines()) for n in nodes)
    senders = [procs.token(f"s{i}") for i in range(3)]
    watcher_tokens = [procs.token(f"w{i}") for i in range(3)]
    watchers = [procs.login(node, token)[0] for node, token in zip(nodes, watcher_tokens,
                                                                     strict=True)]
    wires = [procs.login(node, token)[0] for node, token in zip(nodes, senders, strict=True)]
    bob, welcome = procs.login(nodes[2], procs.token("bob"))
    for i, wire in enumerate(wires):
        burst(wire, f"n{i}-", 30)
    seen = [[(m["seq"], m["from"], m["body"]) for m in room_frames(w, 90)] for w in watchers]
    assert seen[0] == seen[1] == seen[2]
    assert [s for s, _, _ in seen[0]] == list(range(welcome["seq"] + 1, welcome["seq"] + 91))
    for wire in wires:
        assert sum(f["type"] == "ack" for f in room_frames(wire, 90, ("ack", "msg"))) == 30
    bob_last = room_frames(bob, 90)[-1]["seq"]
    nodes[2].kill()  # bob's node dies; bob comes back on node 0
    more = publish(wires[0], ["after the crash 1", "after the crash 2"], [100, 101])
    back, again = procs.login(nodes[0], procs.token("bob"),
                              resume=(welcome["epoch"], bob_last))
    assert again["epoch"] == welcome["epoch"]
    replayed, caught_up = read_replay(back)
    assert [m["seq"] for m in replayed] == [a["seq"] for a in more]
    assert "reset" not in caught_up
