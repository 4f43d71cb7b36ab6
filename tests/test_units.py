"""Unit tests for tokens, limits and the room: pure logic, files at most."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from securechat import protocol
from securechat.errors import ConfigError, TokenError
from securechat.limits import KeyedBuckets, TokenBucket
from securechat.room import InProcessRoom, RoomSnapshot
from securechat.server import client_key
from securechat.tokens import (
    TokenFileWatcher,
    TokenStore,
    add_token,
    load_store,
    revoke_tokens,
    validate_name,
)


# ------------------------------------------------------------------ tokens
def test_add_token_stores_only_a_hash(tmp_path: Path) -> None:
    """The file holds a salted hash, never the token, and is mode 0600."""
    path = tmp_path / "tokens.json"
    token, record = add_token(path, "alice")
    text = path.read_text()
    secret = token.split(".")[2]
    assert secret not in text and token not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(secret) >= 43  # 256 bits in base64url
    assert load_store(path).verify(token) == record


def test_verify_rejects_wrong_and_malformed_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token, _ = add_token(path, "alice")
    store = load_store(path)
    prefix, tid, secret = token.split(".")
    wrong_last = "B" if secret.endswith("A") else "A"  # always a different secret
    assert store.verify(f"{prefix}.{tid}.{secret[:-1]}{wrong_last}") is None
    assert store.verify(f"{prefix}.000000000000.{secret}") is None
    assert store.verify("garbage") is None
    assert store.verify("") is None


def test_several_tokens_per_name_and_revoke_by_id(tmp_path: Path) -> None:
    """Two devices get two tokens; revoking one id leaves the other working."""
    path = tmp_path / "tokens.json"
    t1, r1 = add_token(path, "alice")
    t2, r2 = add_token(path, "alice")
    assert [r.id for r in revoke_tokens(path, r1.id)] == [r1.id]
    store = load_store(path)
    assert store.verify(t1) is None
    assert store.verify(t2) == r2
    assert [r.name for r in revoke_tokens(path, "alice")] == ["alice"]
    assert len(load_store(path)) == 0


def test_world_readable_tokens_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_store(path)


def test_missing_tokens_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="securechat-token add"):
        load_store(tmp_path / "nope.json")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 33, "é", "a/b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(TokenError):
        validate_name(name)


def test_malformed_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps({"version": 1, "tokens": [{"id": "x"}]}).encode())
    os.close(fd)
    with pytest.raises(TokenError, match="malformed entry"):
        load_store(path)


def test_watcher_sees_changes_and_keeps_old_store_on_garbage(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    watcher = TokenFileWatcher(path)
    assert watcher.poll() is None  # unchanged
    token, _ = add_token(path, "bob")
    store = watcher.poll()
    assert store is not None and store.verify(token) is not None
    path.write_text("{broken")
    assert watcher.poll() is None
    assert watcher.last_error is not None


# ------------------------------------------------------------------ limits
def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) is True
    assert bucket.take(0.5) is False
    assert bucket.take(100.0) and bucket.take(100.0) and bucket.take(100.0)
    assert not bucket.take(100.0)  # refill is capped at the burst


def test_token_bucket_zero_rate_is_unlimited() -> None:
    bucket = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(bucket.take(0.0) for _ in range(1000))


def test_keyed_buckets_forget_least_recently_used() -> None:
    buckets = KeyedBuckets(rate=1.0, burst=1, max_keys=2)
    assert buckets.take("a", 0.0)
    assert not buckets.allowed("a", 0.0)
    buckets.take("b", 0.0)
    buckets.take("c", 0.0)  # evicts "a"
    assert len(buckets) == 2
    assert buckets.allowed("a", 0.0)


def test_client_key_groups_ipv6_by_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")


# ------------------------------------------------------------------ room
class FakeMember:
    """A room member that records frames (a test double of the session, not of the room)."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.user_json = protocol.json_string(user)
        self.frames: list[dict[str, object]] = []

    def deliver(self, frame: bytes) -> None:
        self.frames.append(json.loads(frame))


def _greet(snapshot: RoomSnapshot) -> bytes:
    return json.dumps({"type": "hello", "seq": snapshot.seq}).encode()


def test_room_numbers_messages_and_skips_sender() -> None:
    room = InProcessRoom("r", history=2)
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.subscribe(alice, _greet)
    room.subscribe(bob, _greet)
    assert [room.publish(alice, f"m{i}") for i in range(3)] == [1, 2, 3]
    assert [f["seq"] for f in bob.frames if f["type"] == "msg"] == [1, 2, 3]
    assert not [f for f in alice.frames if f["type"] == "msg"]
    assert [e.seq for e in room.history()] == [2, 3]  # bounded
    assert [e.seq for e in room.history(after_seq=2)] == [3]


def test_room_presence_is_per_user() -> None:
    """A second session of the same user is not announced; the last one leaving is."""
    room = InProcessRoom()
    watcher, a1, a2 = FakeMember("w"), FakeMember("alice"), FakeMember("alice")
    room.subscribe(watcher, _greet)
    room.subscribe(a1, _greet)
    room.subscribe(a2, _greet)
    room.unsubscribe(a1, "bye")
    assert room.members() == ("alice", "w")
    room.unsubscribe(a2, "disconnected")
    room.unsubscribe(a2, "disconnected")  # twice is harmless
    kinds = [(f["type"], f.get("user")) for f in watcher.frames]
    assert kinds == [("hello", None), ("join", "alice"), ("leave", "alice")]
    assert room.members() == ("w",)


def test_room_drops_resent_message_ids() -> None:
    """A resend with the same (user, id) gets the original seq and is not delivered twice."""
    room = InProcessRoom()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.subscribe(alice, _greet)
    room.subscribe(bob, _greet)
    assert room.publish(alice, "hi", "c-1") == 1
    assert room.publish(alice, "hi", "c-1") == 1
    assert room.publish(bob, "hi", "c-1") == 2  # ids are per user
    assert len([f for f in bob.frames if f["type"] == "msg"]) == 1
    acks = [f for f in alice.frames if f["type"] == "ack"]
    assert acks == [{"type": "ack", "id": "c-1", "seq": 1}] * 2


def test_sender_sees_its_ack_before_later_messages() -> None:
    """The room acknowledges under its lock: the sender's stream is in seq order."""
    room = InProcessRoom()
    alice, bob = FakeMember("alice"), FakeMember("bob")
    room.subscribe(alice, _greet)
    room.subscribe(bob, _greet)
    room.publish(alice, "a")
    room.publish(bob, "b")
    room.publish(alice, "c", 7)
    seqs = [(f["type"], f["seq"]) for f in alice.frames if f["type"] in ("ack", "msg")]
    assert seqs == [("ack", 1), ("msg", 2), ("ack", 3)]


def test_welcome_snapshot_precedes_later_messages() -> None:
    room = InProcessRoom()
    alice = FakeMember("alice")
    room.subscribe(alice, _greet)
    room.publish(alice, "before")
    bob = FakeMember("bob")
    snap = room.subscribe(bob, _greet)
    room.publish(alice, "after")
    assert snap.seq == 1
    assert bob.frames[0] == {"type": "hello", "seq": 1}
    assert bob.frames[1]["seq"] == 2


def test_store_iteration_is_sorted(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    add_token(path, "zed")
    add_token(path, "amy")
    assert [r.name for r in load_store(path)] == ["amy", "zed"]
    assert len(TokenStore()) == 0


# ------------------------------------------------------------------ send buffer
def test_send_buffer_coalesces_up_to_the_chunk_size() -> None:
    """Queued frames are joined into writes of at most ``chunk`` bytes, in order; a
    frame larger than the chunk goes out alone."""
    from securechat.sendbuffer import SendBuffer

    buf = SendBuffer(chunk=10)
    for part in (b"aaaa", b"bbbb", b"cc", b"d", b"e" * 12, b"ff"):
        buf.append(part)
    assert buf.size == 25 and buf
    writes = [buf._next() for _ in range(3)]  # the coalescing step, without a socket
    assert writes == [b"aaaabbbbcc", b"d", b"e" * 12]
    buf.drop_queued()
    assert buf.size == 0 and not buf.in_flight
    buf.append(b"")
    assert not buf
