"""securechat.server.tokens: hashing, the file format, names, revocation, the watcher and
room grants."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from securechat.errors import ConfigError, TokenError
from securechat.grants import Grants
from securechat.server.tokens import (
    TokenFileWatcher,
    TokenStore,
    add_token,
    effective_grants,
    grant_rooms,
    load_store,
    revoke_tokens,
    set_grants,
    ungrant_rooms,
    validate_name,
)
from tests.support import wrong_token


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
    """A changed secret, an unknown id, garbage and the empty string verify as nobody."""
    path = tmp_path / "tokens.json"
    token, _ = add_token(path, "alice")
    store = load_store(path)
    prefix, _, secret = token.split(".")
    assert store.verify(wrong_token(token)) is None
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
    """A tokens file others can read is refused, saying how to fix it."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_store(path)


def test_missing_tokens_file_says_how_to_create_one(tmp_path: Path) -> None:
    """A missing file names the command that creates one."""
    with pytest.raises(ConfigError, match="securechat-token add"):
        load_store(tmp_path / "nope.json")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 33, "é", "a/b"])
def test_invalid_names(name: str) -> None:
    """Names that are empty, too long, non-ASCII or with odd characters are refused."""
    with pytest.raises(TokenError):
        validate_name(name)


def test_malformed_tokens_file(tmp_path: Path) -> None:
    """An entry missing its fields is reported as malformed, not a KeyError."""
    path = tmp_path / "tokens.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, json.dumps({"version": 1, "tokens": [{"id": "x"}]}).encode())
    os.close(fd)
    with pytest.raises(TokenError, match="malformed entry"):
        load_store(path)


def test_watcher_sees_changes_and_keeps_old_store_on_garbage(tmp_path: Path) -> None:
    """The watcher picks up a change, and on a broken file keeps the last good set."""
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


def test_store_iteration_is_sorted(tmp_path: Path) -> None:
    """A store iterates its records sorted by name."""
    path = tmp_path / "t.json"
    add_token(path, "zed")
    add_token(path, "amy")
    assert [r.name for r in load_store(path)] == ["amy", "zed"]
    assert len(TokenStore()) == 0


# ---------------------------------------------------------------- room grants (issue 10)
OLD_ENTRY = {"id": "0123456789ab", "name": "alice", "salt": "00" * 16,
             "hash": "sha256:" + "ab" * 32, "created": "2026-01-01T00:00:00Z"}


def _write_file(path: Path, data: object, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)


def test_old_format_file_loads_with_no_grants(tmp_path: Path) -> None:
    """A file written before grants loads as it did: grants None, the default room only,
    and is written back without a grants key."""
    path = tmp_path / "tokens.json"
    _write_file(path, {"version": 1, "tokens": [OLD_ENTRY]})
    record = load_store(path).get("0123456789ab")
    assert record is not None and record.grants is None
    assert effective_grants(record, "lobby") == Grants({"lobby": "rw"})
    assert effective_grants(record, "ops").mode("lobby") is None
    add_token(path, "bob")  # rewrites the file
    assert json.loads(path.read_text())["tokens"][0] == OLD_ENTRY


def test_grants_round_trip_through_the_file(tmp_path: Path) -> None:
    """Grants given to add_token are written as {pattern: mode} and load back equal."""
    path = tmp_path / "tokens.json"
    grants = Grants({"general": "rw", "team-*": "ro"})
    token, record = add_token(path, "bot", grants)
    entry = json.loads(path.read_text())["tokens"][0]
    assert entry["grants"] == {"general": "rw", "team-*": "ro"}
    loaded = load_store(path).verify(token)
    assert loaded == record and loaded.grants == grants
    assert effective_grants(loaded, "lobby") is loaded.grants
    assert load_store(path).get(record.id) == record
    assert load_store(path).get("ffffffffffff") is None


@pytest.mark.parametrize(("grants", "reason"), [
    (["general"], "'grants' must be an object"),
    ("general", "'grants' must be an object"),
    ({"Ops": "rw"}, "'Ops': room names are lower case"),
    ({"a b": "rw"}, "'a b'"),
    ({"": "rw"}, "non-empty"),
    ({"ops": "rwx"}, "mode of 'ops' must be"),
    ({"ops": True}, "mode of 'ops' must be"),
    ({"ops": None}, "mode of 'ops' must be"),
    ({f"r{i}": "ro" for i in range(257)}, "more than 256"),
])
def test_bad_grants_in_a_hand_edited_file(tmp_path: Path, grants: object, reason: str) -> None:
    """Bad grants are a TokenError naming the entry and the problem, at load and on reload
    (the watcher keeps the old store)."""
    path = tmp_path / "tokens.json"
    _write_file(path, {"version": 1, "tokens": [OLD_ENTRY]})
    watcher = TokenFileWatcher(path)
    other = {**OLD_ENTRY, "id": "ba9876543210", "grants": grants}
    _write_file(path, {"version": 1, "tokens": [OLD_ENTRY, other]})
    with pytest.raises(TokenError, match="malformed entry 1") as info:
        load_store(path)
    assert reason in str(info.value)
    assert watcher.poll() is None and watcher.last_error is not None
    assert reason in watcher.last_error


def test_grant_and_ungrant_rooms(tmp_path: Path) -> None:
    """grant materialises a token without grants as the default room, then adds or
    replaces modes; ungrant removes exact patterns and reports those not held."""
    path = tmp_path / "tokens.json"
    _, r1 = add_token(path, "alice")
    _, r2 = add_token(path, "alice", Grants({"ops": "rw"}))
    _, bob = add_token(path, "bob")
    records = grant_rooms(path, "alice", ["ops", "team-*"], "ro", "main")
    assert {r.id: r.grants for r in records} == {
        r1.id: Grants({"main": "rw", "ops": "ro", "team-*": "ro"}),
        r2.id: Grants({"ops": "ro", "team-*": "ro"}),
    }
    store = load_store(path)
    assert store.get(bob.id) == bob  # untouched
    assert {r.id: r.grants for r in store if r.name == "alice"} == \
        {r.id: r.grants for r in records}
    results = ungrant_rooms(path, r1.id, ["team-*", "nope"], "main")
    assert [(r.id, missing) for r, missing in results] == [(r1.id, ["nope"])]
    got = load_store(path).get(r1.id)
    assert got is not None and got.grants == Grants({"main": "rw", "ops": "ro"})
    # Exact patterns only: ungranting team-a leaves team-* (held by r2).
    ((r, missing),) = ungrant_rooms(path, r2.id, ["team-a"], "main")
    assert missing == ["team-a"] and r.grants == Grants({"ops": "ro", "team-*": "ro"})
    assert grant_rooms(path, "nobody", ["ops"], "rw", "main") == []
    assert ungrant_rooms(path, "nobody", ["ops"], "main") == []


def test_unchanged_grants_leave_the_file_alone(tmp_path: Path) -> None:
    """A change that changes nothing (the default room granted again, a pattern not held
    removed) keeps a token's None grants and does not rewrite the file."""
    path = tmp_path / "tokens.json"
    _, record = add_token(path, "alice")
    before = os.stat(path)
    (same,) = grant_rooms(path, "alice", ["lobby"], "rw", "lobby")
    ((after, missing),) = ungrant_rooms(path, "alice", ["ops"], "lobby")
    assert same == record
    assert same.grants is None and after.grants is None and missing == ["ops"]
    assert os.stat(path).st_ino == before.st_ino  # not replaced by a rewrite


def test_set_grants_keeps_a_group_readable_mode(tmp_path: Path) -> None:
    """A 0640 file stays 0640 after a grant change; a 0600 one stays 0600."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    grant_rooms(path, "alice", ["ops"], "rw", "lobby")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.chmod(0o640)
    set_grants(path, "alice", lambda g: Grants({**dict(g.items), "dev": "ro"}), "lobby")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    (only,) = load_store(path)
    assert only.grants == Grants({"lobby": "rw", "ops": "rw", "dev": "ro"})


def test_too_many_grants_is_a_token_error_and_keeps_the_file(tmp_path: Path) -> None:
    """A change beyond MAX_GRANTS is a TokenError naming the token; the file is unchanged."""
    path = tmp_path / "tokens.json"
    _, record = add_token(path, "alice")
    text = path.read_text()
    with pytest.raises(TokenError, match=f"token {record.id} of alice: more than 256"):
        grant_rooms(path, "alice", [f"r{i}" for i in range(256)], "rw", "lobby")
    assert path.read_text() == text
