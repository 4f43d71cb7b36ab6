"""Server promises from README.md and docs/protocol.md that no other test exercised:
revocation at the default poll, exit codes on SIGINT, flushing before ``bye``, the
clean TLS close, errors before auth, slow consumers, leave reasons and
the environment variables. The real ``securechat-server`` / ``securechat-token``
commands run as subprocesses where users run them; protocol details use the
in-process ``make_server`` fixture."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechat.cli.server import build_parser, config_from_args
from securechat.io.tls import server_context
from securechat.server.config import ServerConfig
from securechat.server.tokens import add_token, load_store
from tests.support import (
    Certs,
    MakeServer,
    RunningServer,
    ServerProcess,
    WireClient,
    clean_env,
    run_command,
    seconds,
    server_argv,
    server_cli_command,
    tls_connect,
    token_cli_command,
)

#: ServerConfig().tokens_poll and the I/O loop's tick with the default heartbeat.
DEFAULT_POLL = ServerConfig().tokens_poll
DEFAULT_TICK = min(0.25, ServerConfig().heartbeat / 4, ServerConfig().handshake_timeout / 4)


# --------------------------------------------------------------------------- helpers
@dataclasses.dataclass
class Spawner:
    """Starts ``securechat-server`` processes (and wire clients) for one test."""

    tmp: Path
    certs: Certs
    procs: list[ServerProcess] = dataclasses.field(default_factory=list)
    wires: list[WireClient] = dataclasses.field(default_factory=list)

    @property
    def tokens(self) -> Path:
        return self.tmp / "tokens.json"

    def server(self, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
        if not self.tokens.exists():
            add_token(self.tokens, "nobody")
        proc = ServerProcess(*server_argv(self.certs, self.tokens, *args),
                             env=env or clean_env())
        self.procs.append(proc)
        return proc

    def connect(self, port: int, *, rcvbuf: int | None = None) -> WireClient:
        wire = tls_connect(port, self.certs.client_context(), rcvbuf=rcvbuf)
        self.wires.append(wire)
        return wire

    def login(self, port: int, name: str, *, rcvbuf: int | None = None,
              proc: ServerProcess | None = None) -> tuple[WireClient, dict[str, Any]]:
        """Add a token for ``name``, wait until the server logged re-reading the file,
        then log in (retrying auth instead would run into the failed-login throttle)."""
        token, _ = add_token(self.tokens, name)
        (proc or self.procs[-1]).wait_tokens(len(load_store(self.tokens)))
        return self.login_with(port, token, rcvbuf=rcvbuf)

    def login_with(self, port: int, token: str, *, rcvbuf: int | None = None
                   ) -> tuple[WireClient, dict[str, Any]]:
        wire = self.connect(port, rcvbuf=rcvbuf)
        wire.send({"type": "auth", "token": token})
        return wire, wire.expect("welcome")


@pytest.fixture
def spawn(tmp_path: Path, certs: Certs) -> Iterator[Spawner]:
    """Server processes and clients made by the test; all are stopped and reaped after."""
    spawner = Spawner(tmp_path, certs)
    yield spawner
    for wire in spawner.wires:
        wire.close()
    for proc in spawner.procs:
        proc.kill()


def kernel_capacity() -> int:
    """An upper bound on the bytes the kernel can hold between the server and a client
    with a 64 KiB receive buffer: the largest autotuned send buffer plus the receive
    buffer (doubled by the kernel for bookkeeping)."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        wmem_max = 4 * 1024 * 1024
    return wmem_max + 2 * 64 * 1024


def publish_bytes(pub: WireClient, total: int, body_size: int = 60000) -> int:
    """Publish ``total`` bytes of messages (each acknowledged, so queued for every
    member) and return how many messages that took."""
    body = "x" * body_size
    count = 0
    while count * body_size < total:
        pub.send({"type": "msg", "body": body, "id": count})
        ack = pub.expect("ack", skip=("ping", "join", "leave"))
        assert ack["id"] == count
        count += 1
    return count


def read_to_eof(sock: ssl.SSLSocket, timeout: float = 5.0) -> bytes:
    """Every byte up to a clean end of stream; errors (SSLEOFError: no close_notify,
    ConnectionResetError: a reset) propagate to the caller."""
    deadline = time.monotonic() + seconds(timeout)
    data = b""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no end of stream within {timeout} s"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def frames_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


# --------------------------------------------------------------------------- revocation
def test_token_revoke_command_kicks_a_live_session_at_the_default_poll(
        spawn: Spawner) -> None:
    """`securechat-token revoke` ends a live session within poll + tick at the default poll."""
    server = spawn.server()
    port = server.port
    added = run_command(token_cli_command("add", "alice", "--tokens", str(spawn.tokens),
                                          "--quiet"), env=clean_env())
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    server.wait_tokens(2)
    alice, _ = spawn.login_with(port, token)
    bob, _ = spawn.login(port, "bob")
    alice.expect("join")
    revoke = run_command(token_cli_command("revoke", "alice", "--tokens", str(spawn.tokens)),
                         env=clean_env())
    revoked_at = time.monotonic()
    assert revoke.returncode == 0, revoke.stderr
    assert revoke.stdout.startswith("revoked alice ")
    frames = alice.expect_closed(timeout=5)
    elapsed = time.monotonic() - revoked_at
    assert frames and frames[-1]["type"] == "error" and frames[-1]["code"] == "revoked"
    assert elapsed < seconds(DEFAULT_POLL + DEFAULT_TICK + 0.75), f"took {elapsed:.2f} s"
    assert bob.expect("leave") == {"type": "leave", "room": "lobby",
                                   "user": "alice", "reason": "revoked"}
    assert server.stop(signal.SIGINT) == 0


# --------------------------------------------------------------------------- SIGINT
def test_sigint_says_bye_and_exits_0(spawn: Spawner) -> None:
    """Ctrl-C: the connected client gets bye/shutdown then a clean end; exit status 0."""
    server = spawn.server()
    alice, _ = spawn.login(server.port, "alice")
    server.proc.send_signal(signal.SIGINT)
    frames = alice.expect_closed(timeout=10)
    assert [f["type"] for f in frames] == ["bye"]
    assert frames[0]["reason"] == "shutdown"
    assert server.wait_exit(timeout=10) == 0
    assert any('"stopped"' in line or "event=stopped" in line for line in server.log_lines())


def test_sigint_exits_1_when_a_stalled_client_had_to_be_cut(spawn: Spawner) -> None:
    """SIGINT with a stalled client that cannot be flushed in time: cut off, exit 1."""
    server = spawn.server("--shutdown-timeout", "1", "--max-pending", str(256 << 20),
                          "--write-timeout", "600", "--msg-rate", "0")
    port = server.port
    spawn.login(port, "stalled", rcvbuf=64 * 1024)  # never reads again
    pub, _ = spawn.login(port, "pub")
    publish_bytes(pub, kernel_capacity() + (1 << 20))  # > 1 MiB stays in the server's queue
    started = time.monotonic()
    code = server.stop(signal.SIGINT, timeout=15)
    assert time.monotonic() - started < seconds(1 + 5)
    assert code == 1, "\n".join(server.log_lines()[-20:])


def test_shutdown_flushes_everything_owed_before_bye(spawn: Spawner) -> None:
    """Everything acked before SIGINT reaches a member that had not read it, before bye."""
    server = spawn.server("--shutdown-timeout", str(seconds(10)), "--max-pending",
                          str(256 << 20), "--write-timeout", "600", "--msg-rate", "0")
    port = server.port
    late, _ = spawn.login(port, "late", rcvbuf=64 * 1024)
    pub, _ = spawn.login(port, "pub")
    # More than the kernel can hold: at least 1 MiB is still in the server's own queue.
    count = publish_bytes(pub, kernel_capacity() + (1 << 20))
    server.proc.send_signal(signal.SIGINT)
    frames = late.expect_closed(timeout=20)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "join" and kinds[-1] == "bye", kinds[-3:]
    msgs = [f for f in frames if f["type"] == "msg"]
    assert len(msgs) == count
    assert [m["seq"] for m in msgs] == list(range(msgs[0]["seq"], msgs[0]["seq"] + count))
    assert kinds.index("bye") == len(kinds) - 1
    assert server.wait_exit(timeout=20) == 0


def test_leave_reason_shutdown_is_seen_by_the_others(spawn: Spawner) -> None:
    """On SIGINT, members still connected see the others leave with reason shutdown."""
    server = spawn.server()
    port = server.port
    names = ["u0", "u1", "u2"]
    wires = []
    for name in names:
        wire, _ = spawn.login(port, name)
        wires.append(wire)
    for i, wire in enumerate(wires):  # every join seen, so later frames are leaves/bye
        for _ in names[i + 1:]:
            wire.expect("join")
    server.proc.send_signal(signal.SIGINT)
    seen = []
    for name, wire in zip(names, wires, strict=True):
        frames = wire.expect_closed(timeout=10)
        assert frames[-1]["type"] == "bye" and frames[-1]["reason"] == "shutdown"
        leaves = frames[:-1]
        assert all(f["type"] == "leave" and f["reason"] == "shutdown" for f in leaves)
        assert all(f["user"] != name for f in leaves)
        seen.append(len(leaves))
    # One loop says bye to one session after another: the k-th sees k-1 leave.
    assert sorted(seen) == [0, 1, 2]
    assert server.wait_exit() == 0


# --------------------------------------------------------------------------- bye and TLS close
class _PlainTLSServer:
    """A one-shot TLS server that closes without close_notify (or with a reset), so the
    test can show its reader tells those apart from a clean close."""

    def __init__(self, certs: Certs, *, reset: bool) -> None:
        self.ctx = server_context(certs.cert_path, certs.key_path)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.reset = reset
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-tls-peer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(seconds(5))
            raw, _ = self.listener.accept()
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                conn.sendall(b'{"type":"bye"}\n')
                if self.reset:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\0\0\0\0\0\0\0")
                # close() without unwrap(): no close_notify.
        except BaseException as exc:  # pragma: no cover - reported by join()
            self.error = exc

    def join(self) -> None:
        self.thread.join(seconds(5))
        self.listener.close()
        assert not self.thread.is_alive() and self.error is None, self.error


@pytest.mark.parametrize("reset", [False, True])
def test_the_close_detector_sees_a_missing_close_notify(certs: Certs, reset: bool) -> None:
    """Control: the reader below raises on a close without close_notify and on a reset."""
    peer = _PlainTLSServer(certs, reset=reset)
    wire = tls_connect(peer.port, certs.client_context(), ragged_eofs=False)
    try:
        peer.join()
        expected = (ssl.SSLEOFError, ConnectionResetError) if reset else ssl.SSLEOFError
        with pytest.raises(expected):
            read_to_eof(wire.sock)
    finally:
        wire.close()


@pytest.mark.parametrize("who", ["client", "server"])
def test_bye_is_followed_by_a_clean_tls_close(make_server: MakeServer, who: str) -> None:
    """After bye (client's or shutdown's) the stream ends with close_notify, not a reset."""
    running = make_server()
    token = running.add_user("alice")
    wire = running.tls_connect(ragged_eofs=False)
    wire.send({"type": "auth", "token": token})
    data = b""
    wire.sock.settimeout(seconds(5))
    while b"\n" not in data:  # the welcome, read raw so no helper buffers what follows
        chunk = wire.sock.recv(65536)
        assert chunk, "closed before the welcome"
        data += chunk
    if who == "client":
        wire.send({"type": "bye"})
    else:
        assert running.server.shutdown()
    frames = frames_of(data + read_to_eof(wire.sock))
    assert [f["type"] for f in frames] == ["welcome", "bye"]
    if who == "server":
        assert frames[1]["reason"] == "shutdown"


# --------------------------------------------------------------------------- before auth
@pytest.mark.parametrize("payload", [
    b"{]\n", b"\xff\xfe\n", b"[1,2]\n", b'{"type":"auth","token":42}\n',
    b'{"type":"auth","token":"x","n":NaN}\n',
])
def test_bad_frame_before_auth_closes_the_connection(server: RunningServer,
                                                     payload: bytes) -> None:
    """Before auth, bad_frame is said and the connection closed; others are served."""
    wire = server.tls_connect()
    wire.send(payload)
    frames = wire.expect_closed(timeout=5)
    assert [(f["type"], f.get("code")) for f in frames] == [("error", "bad_frame")]
    alice, _ = server.user("alice")
    alice.send({"type": "ping"})
    assert alice.expect("pong") == {"type": "pong"}


# --------------------------------------------------------------------------- slow consumer
@pytest.mark.parametrize(("max_pending", "write_timeout"), [
    (64 * 1024, 600.0),  # cut because its queue passed max_pending
    (256 << 20, 0.3),  # cut because nothing could be written for write_timeout
])
def test_stalled_client_itself_receives_slow_consumer(
        make_server: MakeServer, max_pending: int, write_timeout: float) -> None:
    """A member that stops reading, then reads again, ends on error slow_consumer."""
    running = make_server(max_pending=max_pending, write_timeout=write_timeout, msg_rate=0)
    stalled_token = running.add_user("stalled")
    stalled, _ = running.login(stalled_token, rcvbuf=64 * 1024)
    watcher, _ = running.user("watcher")
    pub, _ = running.user("pub")
    watcher.expect("join")
    body = "y" * 16000
    deadline = time.monotonic() + seconds(30)
    n = 0
    cut = False
    while not cut:  # publish until the watcher sees the stalled member leave
        assert time.monotonic() < deadline, "the stalled member was never cut"
        pub.send({"type": "msg", "body": body, "id": n})
        pub.expect("ack", skip=("ping", "join", "leave"))
        n += 1
        while True:
            frame = watcher.recv()
            if frame["type"] == "msg":
                break
            assert frame == {"type": "leave", "room": "lobby",
                             "user": "stalled", "reason": "slow_consumer"}
            cut = True
    # Read again at once: the server lingers CLOSE_LINGER (1 s) for the error to get out.
    frames = stalled.expect_closed(timeout=5)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "slow_consumer", \
        frames[-1:]
    assert {f["type"] for f in frames[:-1]} <= {"msg", "join"}


# --------------------------------------------------------------------------- leave reasons
def test_leave_reason_idle_timeout_is_seen_by_another_member(make_server: MakeServer) -> None:
    """A member silent for 3 heartbeats is closed; the others see leave idle_timeout."""
    heartbeat = seconds(0.2)  # bob must answer pings within 3 of these, even when slow
    running = make_server(heartbeat=heartbeat)
    silent, _ = running.user("silent")
    bob, _ = running.user("bob")  # bob answers pings (expect() pongs them)
    started = time.monotonic()
    assert bob.expect("leave", timeout=5) == {
        "type": "leave", "room": "lobby", "user": "silent", "reason": "idle_timeout"}
    assert time.monotonic() - started < 3 * heartbeat + seconds(2)
    frames = silent.expect_closed()
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "idle_timeout"


# --------------------------------------------------------------------------- environment
FIELDS = [f.name for f in dataclasses.fields(ServerConfig)]


def _other_value(name: str) -> str:
    """A valid non-default value for field ``name``, as an environment string."""
    special = {"host": "::1", "port": "7444", "tls_min": "1.2", "log_level": "debug",
               "log_format": "json", "room": "ops", "auth_timeout": "20",
               "max_frame": "8192", "store": "memory", "durability": "fsync"}
    if name in special:
        return special[name]
    default = getattr(ServerConfig(), name)
    if isinstance(default, Path):
        return f"/srv/securechat/{name}.file"
    if isinstance(default, bool):  # pragma: no cover - no boolean options
        raise AssertionError(name)
    if isinstance(default, int | float):
        return str(type(default)(default + 3))
    raise AssertionError(f"no test value for {name}")


def test_every_option_has_an_environment_variable_that_is_applied() -> None:
    """SECURECHAT_<FIELD> sets every ServerConfig field, alone or all at once; flags win."""
    parser = build_parser()
    defaults = ServerConfig()
    env_all = {}
    for name in FIELDS:
        env = {f"SECURECHAT_{name.upper()}": _other_value(name)}
        env_all.update(env)
        value = getattr(config_from_args(parser.parse_args([]), env), name)
        assert value != getattr(defaults, name), name
        assert str(value) == env[f"SECURECHAT_{name.upper()}"] or value == type(value)(
            env[f"SECURECHAT_{name.upper()}"]), name
        assert f"SECURECHAT_{name.upper()}" in " ".join(parser.format_help().split())
    cfg = config_from_args(parser.parse_args([]), env_all)
    for name in FIELDS:
        assert getattr(cfg, name) != getattr(defaults, name), name
    cli = config_from_args(parser.parse_args(["--room", "cli"]), env_all)
    assert cli.room == "cli"


def _bad_value(name: str) -> tuple[str, int, str]:
    """An environment value the real command must refuse: (value, exit code, message)."""
    default = getattr(ServerConfig(), name)
    if name in ("tls_min", "log_level", "log_format", "store", "durability"):
        return "bogus", 2, f"--{name.replace('_', '-')} must be"
    if name == "data_dir":  # not creatable, even by root: a path under a file
        return "/dev/null/securechat-data", 1, "/dev/null/securechat-data"
    if name == "host":
        return "192.0.2.1", 1, "cannot listen on 192.0.2.1"
    if isinstance(default, Path):
        return "/nonexistent/securechat-test", 1, "/nonexistent/securechat-test"
    if isinstance(default, int | float):
        return "many", 2, f"SECURECHAT_{name.upper()}='many': not a valid"
    raise AssertionError(name)


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "room"])
def test_securechat_server_reads_each_environment_variable(tmp_path: Path, certs: Certs,
                                                           name: str) -> None:
    """The real command reads SECURECHAT_<OPTION>: a bad value is refused, no traceback."""
    tokens = tmp_path / "tokens.json"
    add_token(tokens, "nobody")
    env = clean_env(SECURECHAT_HOST="127.0.0.1", SECURECHAT_PORT="0",
                    SECURECHAT_CERT=str(certs.cert_path), SECURECHAT_KEY=str(certs.key_path),
                    SECURECHAT_TOKENS=str(tokens))
    value, code, message = _bad_value(name)
    env[f"SECURECHAT_{name.upper()}"] = value
    # --check-config loads everything but does not bind: a bad host needs a real start
    # (which then exits at once).
    argv = [] if name == "host" else ["--check-config"]
    done = run_command(server_cli_command(*argv), env=env)
    assert (done.returncode, message in done.stderr) == (code, True), done.stderr
    assert "Traceback" not in done.stderr


def test_securechat_server_applies_settings_from_the_environment(
        spawn: Spawner, certs: Certs) -> None:
    """The real command, configured only by environment variables, applies them."""
    add_token(spawn.tokens, "nobody")
    env = clean_env(
        SECURECHAT_HOST="127.0.0.1", SECURECHAT_PORT="0",
        SECURECHAT_CERT=str(certs.cert_path), SECURECHAT_KEY=str(certs.key_path),
        SECURECHAT_TOKENS=str(spawn.tokens), SECURECHAT_ROOM="ops",
        SECURECHAT_HEARTBEAT="7.5", SECURECHAT_MAX_FRAME="8192", SECURECHAT_TLS_MIN="1.2",
        SECURECHAT_IO_THREADS="2", SECURECHAT_LOG_FORMAT="json",
        SECURECHAT_LOG_LEVEL="debug", SECURECHAT_RETRY_SPREAD="0")
    proc = ServerProcess(env=env)
    spawn.procs.append(proc)
    listen = json.loads(proc.wait_line(lambda s: '"event": "listen"' in s))
    assert (listen["host"], listen["tls_min"], listen["io_threads"], listen["room"]) == (
        "127.0.0.1", "1.2", 2, "ops")
    port = int(listen["port"])
    alice, welcome = spawn.login(port, "alice")
    assert (welcome["room"], welcome["heartbeat"], welcome["max_frame"]) == ("ops", 7.5, 8192)
    proc.wait_line(lambda s: '"level": "debug"' in s)  # handshake details at debug
    proc.proc.send_signal(signal.SIGTERM)
    bye = alice.expect("bye", timeout=10)
    assert bye["retry_after"] == 0
    assert alice.expect_closed() == []
    assert proc.wait_exit() == 0
