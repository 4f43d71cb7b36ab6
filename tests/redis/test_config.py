"""Choosing a Redis store: the URL, where its password comes from, and the refusals
when Redis or redis-py is missing or the password is wrong."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from securechat.errors import ConfigError
from securechat.server.config import ServerConfig
from securechat.server.tokens import add_token
from securechat.store.base import Pending, StoreOpenError, StoreUnavailable
from securechat.store.redis_config import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    redact,
    redis_target,
)
from securechat.store.redis_log import RedisLog
from securechat.store.redis_script import (
    decode_live,
    dedup_key,
    encode_tail,
    meta_key,
    room_of,
    stream_key,
)
from tests.redis_support import RedisServer
from tests.support import Certs, MakeServer, free_port, publish, run_server_cli, seconds

pytestmark = pytest.mark.timeout(30)


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://chat:s3cret@db.example:6380/2") == "redis://chat:***@db.example:6380/2"
    assert redact("rediss://:s3cret@db/0") == "rediss://:***@db/0"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


def test_the_password_comes_from_the_url_then_the_file_then_the_variable(tmp_path: Path
                                                                         ) -> None:
    secret = tmp_path / "redis.pw"
    secret.write_text("from-file\n", encoding="utf-8")
    env = {PASSWORD_FILE_ENV: str(secret), PASSWORD_ENV: "from-env"}
    assert redis_target("redis://u:in-url@h/0", env=env).password is None  # the URL's own
    assert redis_target("redis://u@h/0", env=env).password == "from-file"
    assert redis_target("redis://h/0", env={PASSWORD_ENV: "from-env"}).password == "from-env"
    assert redis_target("redis://h/0", env={}).password is None


@pytest.mark.parametrize(("url", "why"), [
    ("redis:///0", "no host"),
    ("redis://h:99999/0", "(?i)port"),
    ("redis://h/lobby", "database number"),
])
def test_a_bad_url_is_refused_saying_why(url: str, why: str) -> None:
    with pytest.raises(StoreOpenError, match=why):
        redis_target(url, env={})


def test_an_unreadable_or_empty_password_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreOpenError, match="cannot read"):
        redis_target("redis://h/0", env={PASSWORD_FILE_ENV: str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(StoreOpenError, match="empty"):
        redis_target("redis://h/0", env={PASSWORD_FILE_ENV: str(empty)})


def test_keys_of_a_room_share_one_hash_tag() -> None:
    """Every key of a room is in one cluster slot: the script may touch them all."""
    keys = [meta_key("ops.1"), stream_key("ops.1"), dedup_key("ops.1", "a}b", "c{", "x}")]
    assert all(k.startswith("securechat:{ops.1}:") for k in keys)
    assert {room_of(k) for k in keys} == {"ops.1"}


def test_the_store_option_takes_redis_urls_only_besides_sqlite_and_memory() -> None:
    assert ServerConfig(store="rediss://db:6380/0").store == "rediss://db:6380/0"
    with pytest.raises(ConfigError, match="redis://"):
        ServerConfig(store="postgres://db/0")


def test_an_unreachable_redis_stops_the_server_from_starting(certs: Certs,
                                                            tmp_path: Path) -> None:
    """securechat-server exits 1 naming the URL (never its password) and why."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "alice")
    url = f"redis://chat:hunter2@127.0.0.1:{free_port()}/0"
    done = run_server_cli("--store", url, "--cert", str(certs.cert_path), "--key",
                          str(certs.key_path), "--tokens", str(tokens), "--check-config")
    assert done.returncode == 1, done.stderr
    assert "cannot connect" in done.stderr
    assert "redis://chat:***@127.0.0.1" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_without_redis_py_the_error_says_what_to_install() -> None:
    code = ("import sys; sys.modules['redis'] = None\n"
            "from securechat.store.redis_log import RedisLog\n"
            "try:\n    RedisLog.open('redis://127.0.0.1:1/0')\n"
            "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=seconds(20), check=False)
    assert "StoreOpenError" in done.stdout
    assert "pip install 'securechat[redis]'" in done.stdout


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with a password (requested before make_server: stopped after)."""
    redis = RedisServer(tmp_path / "redis", password="correct horse")
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def test_a_password_protected_redis(tmp_path: Path, locked_redis: RedisServer,
                                    make_server: MakeServer,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The password from SECURECHAT_REDIS_PASSWORD_FILE logs in; a wrong one is refused
    at startup, saying so."""
    secret = tmp_path / "redis.pw"
    secret.write_text("correct horse\n", encoding="utf-8")
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(secret))
    node = make_server(store=locked_redis.url)
    alice, _ = node.login(node.add_user("alice"))
    assert publish(alice, ["hello"])[0]["seq"] == 1
    secret.write_text("wrong\n", encoding="utf-8")
    with pytest.raises(StoreOpenError, match="login refused"):
        RedisLog.open(locked_redis.url)


def test_the_live_format_round_trips_every_field() -> None:
    """What the script publishes (seq|at|epoch|tail) decodes to the stored message."""
    item = Pending("ops", "zoë", "phone|1", 7, 'a|b "quoted" ✓')
    entry = decode_live("ops", f"42|1764662400123|e1|{encode_tail(item, 'node:9')}")
    message = entry.message
    assert (message.seq, message.sender, message.client, message.msg_id, message.body) == (
        42, "zoë", "phone|1", 7, 'a|b "quoted" ✓')
    assert message.ts == "2025-12-02T08:00:00.123Z" and entry.epoch == "e1"
    assert entry.origin == "node:9"


def test_a_full_publish_queue_refuses_at_once(redis: RedisServer) -> None:
    """Past max_items a publish is refused (store_unavailable with retry_after) and
    nothing of it is queued; the broker is not started here, so nothing drains."""
    log = RedisLog.open(redis.url, max_items=2, retry_after=0.5)
    try:
        for i in range(2):
            log.submit(Pending("lobby", "alice", None, i, "queued"))
        with pytest.raises(StoreUnavailable, match="queue is full") as refused:
            log.submit(Pending("lobby", "alice", None, 2, "refused"))
        assert refused.value.retry_after == 0.5
        assert log.broker.published == 0
    finally:
        log.close()


def test_redis_py_is_imported_only_for_a_redis_store() -> None:
    """A server on SQLite or memory never loads redis-py (it is an optional extra)."""
    code = ("import sys\nimport securechat.cli.server, securechat.server.listener\n"
            "from securechat.server.config import ServerConfig\n"
            "ServerConfig(store='redis://127.0.0.1:1/0')\n"
            "print('redis' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=seconds(20), check=False)
    assert done.stdout.strip() == "False", done.stderr


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Certs) -> Iterator[RedisServer]:
    """A redis-server that speaks only TLS (requested before make_server)."""
    redis = RedisServer(tmp_path / "redis", tls=certs)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


def test_a_rediss_url_talks_tls(tls_redis: RedisServer, make_server: MakeServer) -> None:
    """rediss:// with the CA in the URL's query: the node publishes through TLS."""
    assert tls_redis.url.startswith("rediss://")
    node = make_server(store=tls_redis.url)
    alice, _ = node.login(node.add_user("alice"))
    assert publish(alice, ["over tls"])[0]["seq"] == 1
    assert [m.body for m in node.server.rooms.log.read_latest("lobby", 5)] == ["over tls"]
