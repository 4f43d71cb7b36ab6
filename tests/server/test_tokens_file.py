"""The tokens file: every bad file is a clear TokenError/ConfigError, modes that let others
write (or read) it are refused, at start through the real command and on reload."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from securechat.errors import ConfigError, TokenError
from securechat.server.tokens import TokenFileWatcher, add_token, load_store, revoke_tokens
from tests.support import Certs, run_server_cli

GOOD = {"id": "0123456789ab", "name": "alice", "salt": "00" * 16,
        "hash": "sha256:" + "ab" * 32, "created": "2026-01-01T00:00:00Z"}


def _entry(**changes: object) -> bytes:
    return json.dumps({"version": 1, "tokens": [{**GOOD, **changes}]}).encode()


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    path.chmod(mode)


BAD_FILES = {
    "not_utf8": (b"\xff", "not UTF-8"),
    "nested_unclosed": (b"[" * 100_000, "not valid JSON"),
    "nested_in_entry": (b'{"version": 1, "tokens": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
                        "not valid JSON"),
    "entry_not_object": (b'{"version": 1, "tokens": [1]}', "malformed entry 0"),
    "tokens_not_list": (b'{"version": 1, "tokens": {}}', "'tokens' must be a list"),
    "top_level_list": (b"[]", "not a securechat tokens file"),
    "version_bool": (b'{"version": true, "tokens": []}', "not a securechat tokens file"),
    "version_string": (b'{"version": "1", "tokens": []}', "not a securechat tokens file"),
    "name_int": (_entry(name=5), "'name' must be a string"),
    "name_invalid": (_entry(name="a b"), "'name' must be 1-32"),
    "id_int": (_entry(id=5), "'id' must be a string"),
    "id_not_hex": (_entry(id="zzzzzzzzzzzz"), "'id' must be 12"),
    "salt_not_hex": (_entry(salt="zz"), "'salt' must be hex"),
    "salt_list": (_entry(salt=[1]), "'salt' must be a string"),
    "hash_int": (_entry(hash=5), "'hash' must be a string"),
    "hash_scheme": (_entry(hash="md5:" + "ab" * 16), "unknown hash scheme"),
    "hash_short": (_entry(hash="sha256:abcd"), "unknown hash scheme"),
    "created_int": (_entry(created=5), "'created' must be a string"),
    "duplicate_id": (json.dumps({"version": 1, "tokens": [GOOD, GOOD]}).encode(),
                     "duplicate id"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_tokens_file_is_a_clear_token_error(tmp_path: Path, case: str) -> None:
    """Not UTF-8, nested too deep, wrong types: always TokenError with the reason."""
    data, reason = BAD_FILES[case]
    path = tmp_path / "tokens.json"
    _write(path, data)
    with pytest.raises(TokenError) as info:
        load_store(path)
    assert reason in str(info.value)
    assert str(path) in str(info.value)


def test_well_formed_entry_loads(tmp_path: Path) -> None:
    """The reference entry used above is itself valid (so each case tests one fault)."""
    path = tmp_path / "tokens.json"
    _write(path, _entry())
    assert [r.name for r in load_store(path)] == ["alice"]


@pytest.mark.parametrize("mode", [0o660, 0o620, 0o666, 0o604, 0o602, 0o670], ids=oct)
def test_tokens_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Group- or world-writable, or other-readable: ConfigError naming file, mode, fix."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        load_store(path)
    text = str(info.value)
    assert str(path) in text and f"mode {mode:04o}" in text and f"chmod 600 {path}" in text


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400, 0o440], ids=oct)
def test_owner_only_or_group_readable_tokens_file_is_accepted(tmp_path: Path, mode: int
                                                              ) -> None:
    """0600 and 0640 (a secret shared with a service group) load."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    path.chmod(mode)
    assert len(load_store(path)) == 1


@pytest.mark.parametrize("mode", [0o600, 0o640], ids=oct)
def test_add_and_revoke_keep_an_accepted_mode(tmp_path: Path, mode: int) -> None:
    """securechat-token rewrites a 0640 file as 0640 (the group keeps read access), a
    0600 file as 0600; a new file is 0600."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(mode)
    add_token(path, "bob")
    assert path.stat().st_mode & 0o777 == mode
    revoke_tokens(path, "alice")
    assert path.stat().st_mode & 0o777 == mode
    assert [r.name for r in load_store(path)] == ["bob"]


def test_watcher_refuses_a_file_made_group_writable_and_keeps_the_old_store(
        tmp_path: Path) -> None:
    """chmod 660 while running: refused once with the chmod hint; chmod 600 reloads."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    add_token(path, "bob")
    watcher = TokenFileWatcher(path)
    revoke_tokens(path, "alice")
    path.chmod(0o660)
    assert watcher.poll() is None
    assert watcher.last_error is not None and "chmod 600" in watcher.last_error
    watcher.last_error = None
    assert watcher.poll() is None and watcher.last_error is None  # reported once
    path.chmod(0o600)
    store = watcher.poll()
    assert store is not None and [r.name for r in store] == ["bob"]


def test_watcher_reports_each_bad_change_once(tmp_path: Path) -> None:
    """A broken file is reported once per change, not on every poll, and a fix loads."""
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    good = path.read_bytes()
    watcher = TokenFileWatcher(path)
    for data in (b"\xff", b"[" * 100_000, b'{"version": 1, "tokens": [1]}'):
        _write(path, data)
        assert watcher.poll() is None
        assert watcher.last_error is not None
        watcher.last_error = None
        for _ in range(3):
            assert watcher.poll() is None and watcher.last_error is None
    _write(path, good)
    store = watcher.poll()
    assert store is not None and len(store) == 1


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "start"])
def test_server_command_refuses_a_group_writable_tokens_file(
        tmp_path: Path, certs: Certs, check: bool) -> None:
    """securechat-server with a 0660 tokens file exits 1 with one line naming file and mode."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "alice")
    tokens.chmod(0o660)
    done = run_server_cli("--port", "0", "--cert", str(certs.cert_path), "--key",
                          str(certs.key_path), "--tokens", str(tokens),
                          *(["--check-config"] if check else []))
    err = done.stderr
    assert done.returncode == 1, (done.stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(tokens) in lines[0] and "mode 0660" in lines[0]
    assert f"chmod 600 {tokens}" in lines[0]


def test_server_command_accepts_a_group_readable_tokens_file(tmp_path: Path, certs: Certs
                                                             ) -> None:
    """0640 passes --check-config."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "alice")
    tokens.chmod(0o640)
    done = run_server_cli("--cert", str(certs.cert_path), "--key", str(certs.key_path),
                          "--tokens", str(tokens), "--check-config")
    assert done.returncode == 0, done.stderr
    assert "configuration OK (1 tokens, " in done.stdout


def test_server_command_reports_a_non_utf8_tokens_file_in_one_line(
        tmp_path: Path, certs: Certs) -> None:
    """A tokens file that is one \\xff byte: exit 1, one line, no traceback."""
    tokens = tmp_path / "tokens.json"
    _write(tokens, b"\xff")
    done = run_server_cli("--cert", str(certs.cert_path), "--key", str(certs.key_path),
                          "--tokens", str(tokens), "--check-config")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip().splitlines() == [
        f"securechat-server: error: tokens file {tokens} is not UTF-8 (byte 0)"]
