"""securechat.server.tokens: hashing, the file format, names, revocation and the watcher."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from securechat.errors import ConfigError, TokenError
from securechat.server.tokens import (
    TokenFileWatcher,
    TokenStore,
    add_token,
    load_store,
    revoke_tokens,
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
