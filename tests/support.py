"""Test helpers: a real server on 127.0.0.1 port 0 with trustme certificates, and a
tiny blocking wire client that speaks raw frames (so tests see exactly what the
server sends). Every server started here is shut down and its threads joined."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import trustme

from securechat.grants import Grants
from securechat.io.tls import server_context
from securechat.server import Server
from securechat.server.config import ServerConfig
from securechat.server.ops.config import AdminConfig
from securechat.server.session import Session
from securechat.server.tokens import (
    TokenStore,
    add_token,
    load_store,
    revoke_tokens,
)
from securechat.server.tokens import _write_store as write_store

#: Multiply every test deadline by this (slow machines: SECURECHAT_TEST_SCALE=3).
SCALE = float(os.environ.get("SECURECHAT_TEST_SCALE", "1"))


def seconds(value: float) -> float:
    """A deadline (an upper bound) stretched for slow machines. Never use it on a lower
    bound: what must not happen *before* a time does not move with the machine."""
    return value * SCALE


@dataclass
class Certs:
    """A trustme CA and a server certificate for localhost/127.0.0.1/::1, as files."""

    ca: trustme.CA
    ca_path: Path
    cert_path: Path
    key_path: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        return ctx


def make_certs(directory: Path, *names: str) -> Certs:
    ca = trustme.CA()
    cert = ca.issue_cert(*(names or ("localhost", "127.0.0.1", "::1")))
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    return Certs(ca, ca_path, cert_path, key_path)


class WireClient:
    """A blocking TLS client used from one test thread only; frames are dicts."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, frame: dict[str, Any] | bytes) -> None:
        data = frame if isinstance(frame, bytes) else json.dumps(frame).encode() + b"\n"
        self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, or AssertionError on EOF / timeout."""
        line = self.recv_line(timeout)
        if line is None:
            raise AssertionError("connection closed while waiting for a frame")
        obj = json.loads(line)
        assert isinstance(obj, dict)
        return obj

    def recv_line(self, timeout: float = 5.0) -> bytes | None:
        """The next raw line, or None at end of stream."""
        deadline = time.monotonic() + seconds(timeout)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame within {timeout} s (buffered {self._buf[:80]!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, ssl.SSLEOFError):
                chunk = b""
            if not chunk:
                if self._buf:
                    raise AssertionError(f"EOF inside a frame: {self._buf[:80]!r}")
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def expect(self, kind: str, timeout: float = 5.0, *, skip: tuple[str, ...] = ("ping",)
               ) -> dict[str, Any]:
        """The next frame of type ``kind``; frames of types in ``skip`` are passed over
        (answering server pings), anything else fails the test."""
        while True:
            frame = self.recv(timeout)
            if frame.get("type") == "ping" and "ping" in skip:
                self.send({"type": "pong"})
                continue
            if frame.get("type") in skip:
                continue
            assert frame.get("type") == kind, f"expected {kind}, got {frame}"
            return frame

    def expect_closed(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Read until end of stream; return the frames seen on the way."""
        frames: list[dict[str, Any]] = []
        while True:
            line = self.recv_line(timeout)
            if line is None:
                return frames
            frames.append(json.loads(line))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def tls_connect(port: int, context: ssl.SSLContext, *, host: str = "127.0.0.1",
                server_hostname: str = "localhost", rcvbuf: int | None = None,
                ragged_eofs: bool = True) -> WireClient:
    """A TLS wire client (TCP_NODELAY, scaled 5 s socket timeout). ``rcvbuf`` fixes a small
    receive buffer (a reader that stops then stalls quickly); ``ragged_eofs=False`` makes
    a missing close_notify raise SSLEOFError instead of reading as end of stream."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(seconds(5))
        raw.connect((host, port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = context.wrap_socket(raw, server_hostname=server_hostname,
                                   suppress_ragged_eofs=ragged_eofs)
    except BaseException:
        raw.close()
        raise
    return WireClient(sock)


@dataclass
class RunningServer:
    server: Server
    certs: Certs
    tokens_path: Path
    clients: list[WireClient] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.server.address[0]

    @property
    def port(self) -> int:
        return self.server.address[1]

    def add_user(self, name: str, grants: dict[str, str] | None = None) -> str:
        """Add a token (with room ``grants``, else the default room's) to the tokens
        file and wait until the server has re-read it."""
        token, record = add_token(self.tokens_path, name,
                                  None if grants is None else Grants(grants))
        wait_for(lambda: record.id in self.server.tokens, what=f"server to load {name}'s token")
        return token

    def set_grants(self, name: str, grants: dict[str, str]) -> None:
        """Replace every token of ``name``'s grants in the file and wait until the server
        has re-read it (as ``securechat-token grant``/``ungrant`` would)."""
        store = load_store(self.tokens_path)
        new = Grants(grants)
        records = [dataclasses.replace(r, grants=new) if r.name == name else r for r in store]
        write_store(self.tokens_path, TokenStore(records))
        ids = {r.id for r in records if r.name == name}
        wait_for(lambda: all((rec := self.server.tokens.get(i)) is not None
                             and rec.grants == new for i in ids),
                 what=f"server to load {name}'s new grants")

    def revoke(self, name: str) -> None:
        revoke_tokens(self.tokens_path, name)

    def tls_connect(self, *, server_hostname: str = "localhost",
                    context: ssl.SSLContext | None = None, rcvbuf: int | None = None,
                    ragged_eofs: bool = True) -> WireClient:
        """:func:`tls_connect` to this server; the client is closed at the end of the test."""
        client = tls_connect(self.port, context or self.certs.client_context(),
                             host=self.host, server_hostname=server_hostname, rcvbuf=rcvbuf,
                             ragged_eofs=ragged_eofs)
        self.clients.append(client)
        return client

    def login(self, token: str, *, rcvbuf: int | None = None, client_id: str | None = None,
              resume: tuple[str, int] | None = None,
              rooms: list[Any] | None = None) -> tuple[WireClient, dict[str, Any]]:
        """Connect, authenticate (with ``auth.client`` / ``auth.resume`` / ``auth.rooms``
        if given), return the client and its welcome frame."""
        client = self.tls_connect(rcvbuf=rcvbuf)
        auth: dict[str, Any] = {"type": "auth", "token": token}
        if client_id is not None:
            auth["client"] = client_id
        if resume is not None:
            auth["resume"] = {"epoch": resume[0], "seq": resume[1]}
        if rooms is not None:
            auth["rooms"] = rooms
        client.send(auth)
        return client, client.expect("welcome")

    def user(self, name: str, *, client_id: str | None = None,
             resume: tuple[str, int] | None = None, rooms: list[Any] | None = None,
             grants: dict[str, str] | None = None) -> tuple[WireClient, dict[str, Any]]:
        """Log in as ``name`` with a new token of that user (with ``grants`` if given),
        into ``rooms`` (protocol 3) if given, else the default room."""
        return self.login(self.add_user(name, grants), client_id=client_id, resume=resume,
                          rooms=rooms)

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()

    def session_of(self, user: str) -> Session | None:
        """The server's live session of ``user`` (the first found), or None. Read-only
        use from the test thread: for state no event reports (write progress)."""
        for loop in self.server._loops:
            for endpoint in list(loop.endpoints):  # list(): one step under the GIL
                if isinstance(endpoint, Session) and endpoint.user == user:
                    return endpoint
        return None


#: The ``make_server`` fixture's type, for test signatures.
MakeServer = Callable[..., RunningServer]


_data_dirs = itertools.count(1)


def start_server(tmp: Path, certs: Certs, *, admin: AdminConfig | None = None,
                 **overrides: Any) -> RunningServer:
    """A Server on 127.0.0.1 port 0 (``admin``: with the admin endpoint too)."""
    tokens_path = tmp / "tokens.json"
    if not tokens_path.exists():
        add_token(tokens_path, "nobody")
        revoke_tokens(tokens_path, "nobody")
    settings: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "cert": certs.cert_path, "key": certs.key_path,
        "tokens": tokens_path, "tokens_poll": 0.05, "shutdown_timeout": seconds(3.0),
        # The default store (SQLite), each server in a data dir of its own unless told.
        "data_dir": tmp / f"data-{next(_data_dirs)}",
    }
    settings.update(overrides)
    config = ServerConfig(**settings)
    ctx = server_context(config.cert, config.key, tls_min=config.tls_min)
    server = Server(config, ssl_context=ctx, admin=admin)
    server.start()
    return RunningServer(server, certs, tokens_path)


def stop_server(running: RunningServer) -> None:
    running.close_clients()
    assert running.server.shutdown(), "server threads did not stop in time"
    leftover = [t.name for t in running.server.threads() if t.is_alive()]
    assert not leftover, f"threads still running: {leftover}"


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
             ) -> None:
    """Poll a cheap predicate against a deadline (for server-side state that has no event)."""
    deadline = time.monotonic() + seconds(timeout)
    event = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        event.wait(0.005)


class LogRecords(logging.Handler):
    """Every record of the ``securechat`` logger tree (see the ``server_log`` fixture)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def clear(self) -> None:
        self.records.clear()

    def events(self) -> list[str]:
        """The ``event`` name of every record, in order ("" for records without one)."""
        return [str(getattr(r, "event", "")) for r in self.records]

    def named(self, event: str) -> list[logging.LogRecord]:
        """The records of one event."""
        return [r for r in self.records if getattr(r, "event", None) == event]

    def tracebacks(self) -> list[logging.LogRecord]:
        """The records that carry an exception (a logged traceback)."""
        return [r for r in self.records if r.exc_info]


# --------------------------------------------------------------------------- tokens, ports
def wrong_token(token: str) -> str:
    """``token`` with the last character of its secret changed: well-formed, same id,
    and always different (a random replacement is the same 1 time in 64)."""
    return token[:-1] + ("B" if token.endswith("A") else "A")


def error_codes(frames: list[dict[str, Any]]) -> list[Any]:
    """The ``code`` of every error frame in ``frames``, in order."""
    return [f.get("code") for f in frames if f.get("type") == "error"]


def free_port() -> int:
    """A localhost TCP port nobody listens on right now (bound, then released): free to
    give a child process, and refused when connected to."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- commands
def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without SECURECHAT_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECURECHAT_")}
    # Except the test's own data dir (conftest.py): a server never writes ./data.
    if "SECURECHAT_DATA_DIR" in os.environ:
        env["SECURECHAT_DATA_DIR"] = os.environ["SECURECHAT_DATA_DIR"]
    env.update(extra)
    return env


def run_command(argv: Sequence[str], *, stdin: str = "", timeout: float = 20.0,
                env: dict[str, str] | None = None, cwd: Path | None = None
                ) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, output captured as text, under a scaled deadline."""
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                          timeout=seconds(timeout), env=env, cwd=cwd, check=False)


def server_cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "securechat.cli.server", *args]


def token_cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "securechat.cli.token", *args]


def run_server_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0
                   ) -> subprocess.CompletedProcess[str]:
    """Run ``securechat-server ARGS`` to completion with a deadline; ``env`` is added to
    the test process environment."""
    return run_command(server_cli_command(*args), timeout=timeout,
                       env={**os.environ, **(env or {})})


class Process:
    """A child process whose stdout and stderr are both drained by reader threads, so it
    can never block on a full pipe; lines are awaited against deadlines."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 open_stdin: bool = False, cwd: Path | None = None) -> None:
        """``open_stdin``: give it a pipe that stays open and silent (no end of input)."""
        self.proc = subprocess.Popen(list(argv),
                                     stdin=subprocess.PIPE if open_stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, cwd=cwd)
        #: Lines of each stream that ``read_until`` has consumed, in order.
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self._data = {"out": b"", "err": b""}
        self._taken = {"out": 0, "err": 0}
        self._eof = {"out": False, "err": False}
        self._cond = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._drain, args=("out", self.proc.stdout),
                             name=f"test-proc-{self.proc.pid}-out", daemon=True),
            threading.Thread(target=self._drain, args=("err", self.proc.stderr),
                             name=f"test-proc-{self.proc.pid}-err", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: str, pipe: IO[bytes]) -> None:
        fd = pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof[stream] = True
                    self._cond.notify_all()
                    return
                self._data[stream] += chunk
                self._cond.notify_all()

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 10.0, *,
                   stream: str = "out") -> str:
        """Consume lines of ``stream`` ("out" or "err") until one matches; AssertionError
        on timeout or end of stream."""
        seen = self.lines if stream == "out" else self.err_lines
        deadline = time.monotonic() + seconds(timeout)
        with self._cond:
            while True:
                data = self._data[stream]
                while (end := data.find(b"\n", self._taken[stream])) >= 0:
                    line = data[self._taken[stream]:end].decode(errors="replace")
                    self._taken[stream] = end + 1
                    seen.append(line)
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof[stream]:
                    break
                self._cond.wait(left)
        raise AssertionError(f"no matching line on std{stream} within {timeout} s; "
                             f"got {seen}; stderr: {self.stderr[-2000:]!r}")

    @property
    def stderr(self) -> str:
        """Everything written to stderr so far."""
        with self._cond:
            return self._data["err"].decode(errors="replace")

    def _rest(self, stream: str) -> str:
        with self._cond:
            return self._data[stream][self._taken[stream]:].decode(errors="replace")

    def _join_readers(self, timeout: float) -> None:
        for reader in self._readers:
            reader.join(timeout)
        alive = [r.name for r in self._readers if r.is_alive()]
        assert not alive, f"pipe readers still running (a grandchild holds them?): {alive}"

    def finish(self, timeout: float = 10.0) -> tuple[int, str, str]:
        """Wait for the exit (stdin left as it is); return (code, the stdout not consumed
        by ``read_until``, all of stderr)."""
        code = self.proc.wait(timeout=seconds(timeout))
        self._join_readers(seconds(timeout))
        self._close_pipes()
        return code, self._rest("out"), self.stderr

    def kill(self) -> None:
        """Kill it if it still runs, reap it and join the readers (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=seconds(5))
        self._join_readers(seconds(5))
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def server_argv(certs: Certs, tokens: Path, *args: str) -> list[str]:
    """``securechat-server`` arguments for 127.0.0.1, port 0, ``certs`` and ``tokens``."""
    return ["--host", "127.0.0.1", "--port", "0", "--cert", str(certs.cert_path),
            "--key", str(certs.key_path), "--tokens", str(tokens),
            "--data-dir", str(tokens.parent / "data"), *args]


class ServerProcess(Process):
    """The real ``securechat-server`` as a subprocess (both pipes drained by
    :class:`Process`). Its log (stderr) is searched from the start, never consumed, so
    that any number of waits can look for lines already written."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 nofile: int | None = None) -> None:
        """``nofile``: a lower open-files limit (soft and hard), set in the child before
        the server starts (not with preexec_fn: unsafe in a process with threads)."""
        launcher = ["-m", "securechat.cli.server"] if nofile is None else [
            "-c", "import resource, runpy, sys; "
                  f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                  "sys.argv[0] = 'securechat-server'; "
                  "runpy.run_module('securechat.cli.server', run_name='__main__')"]
        super().__init__([sys.executable, *launcher, *args], env=env)

    def log_lines(self) -> list[str]:
        """Every complete line of stderr so far."""
        with self._cond:
            data = self._data["err"]
        return data[:data.rfind(b"\n") + 1].decode(errors="replace").splitlines()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first stderr line (from the start) matching ``predicate``; AssertionError
        on timeout or once stderr has ended without one."""
        deadline = time.monotonic() + seconds(timeout)
        with self._cond:
            while True:
                for line in self.log_lines():  # the condition's lock is reentrant
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self._eof["err"]:
                    raise AssertionError(f"no matching server log line within {timeout} s;"
                                         f" got {self.log_lines()}")
                self._cond.wait(left)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log records (``--log-format json``) of event ``name`` so far."""
        records = (json.loads(line) for line in self.log_lines() if line.startswith("{"))
        return [r for r in records if r.get("event") == name]

    def wait_event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """The first JSON log record of event ``name``."""
        line = self.wait_line(lambda s: s.startswith("{") and json.loads(s).get("event") == name,
                              timeout)
        record: dict[str, Any] = json.loads(line)
        return record

    def wait_tokens(self, count: int, timeout: float = 10.0) -> None:
        """Wait for the log line saying the server re-read a tokens file of ``count``
        or more entries (text or JSON log)."""
        def loaded(line: str) -> bool:
            if line.startswith("{"):
                obj = json.loads(line)
                return bool(obj.get("event") == "tokens_reloaded" and obj["tokens"] >= count)
            found = re.search(r"event=tokens_reloaded tokens=(\d+)", line)
            return found is not None and int(found.group(1)) >= count
        self.wait_line(loaded, timeout)

    @property
    def port(self) -> int:
        """The port from the ``listening on`` line (waited for)."""
        line = self.wait_line(lambda s: "securechat-server: listening on " in s)
        found = re.search(r"listening on \S+:(\d+) ", line)
        assert found, line
        return int(found.group(1))

    def cpu_seconds(self) -> float:
        """utime + stime of the whole server process (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_exit(self, timeout: float = 20.0) -> int:
        """Wait for the process to end by itself; its exit code."""
        code, _, _ = self.finish(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig`` (if it still runs) and return the exit code; killed and reaped
        if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.wait_exit(timeout)
        finally:
            self.kill()


# --------------------------------------------------------------------------- issue 9: the room log
#: Frames a publisher passes over while it waits for its acks (others' traffic).
OTHERS = ("ping", "msg", "join", "leave")


def publish(wire: WireClient, bodies: Sequence[str], ids: Sequence[str | int] | None = None,
            *, window: int = 500, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send one msg per body (``window`` at a time, pipelined) and return their acks in
    order; pings are answered and others' msg/join/leave frames passed over."""
    ids = list(range(len(bodies))) if ids is None else list(ids)
    assert len(ids) == len(bodies)
    acks: list[dict[str, Any]] = []
    for start in range(0, len(bodies), window):
        part = range(start, min(start + window, len(bodies)))
        wire.send(b"".join(json.dumps({"type": "msg", "body": bodies[i], "id": ids[i]}).encode()
                           + b"\n" for i in part))
        acks.extend(wire.expect("ack", timeout, skip=OTHERS) for _ in part)
    assert [a["id"] for a in acks] == ids, "acks out of order"
    return acks


def read_replay(wire: WireClient, timeout: float = 10.0
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """After a resume's welcome: the replayed msg frames and the ``caught_up`` that ends
    them. Live frames (pings included) are held until then, so anything else fails."""
    msgs: list[dict[str, Any]] = []
    while True:
        frame = wire.recv(timeout)
        if frame.get("type") == "caught_up":
            return msgs, frame
        assert frame.get("type") == "msg", f"during a replay: {frame}"
        msgs.append(frame)


class ServerProcesses:
    """Real ``securechat-server`` processes for one test, one after another or side by
    side, sharing one tokens file and one data dir (``tmp/data``). ``close`` closes every
    client and kills and reaps every process."""

    def __init__(self, tmp: Path, certs: Certs) -> None:
        self.tmp = tmp
        self.certs = certs
        self.procs: list[ServerProcess] = []
        self.wires: list[WireClient] = []

    @property
    def tokens(self) -> Path:
        return self.tmp / "tokens.json"

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    def argv(self, *args: str) -> list[str]:
        if not self.tokens.exists():
            add_token(self.tokens, "nobody")
        return server_argv(self.certs, self.tokens, "--msg-rate", "0", *args)

    def token(self, name: str) -> str:
        """A new token of ``name``; running servers are waited for until they load it."""
        from securechat.server.tokens import load_store  # (only this helper needs it)
        token, _ = add_token(self.tokens, name)
        count = len(load_store(self.tokens))
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.wait_tokens(count)
        return token

    def start(self, *args: str) -> ServerProcess:
        """Start one (``--msg-rate 0`` plus ``args``) and wait until it listens."""
        proc = ServerProcess(*self.argv(*args), env=clean_env())
        self.procs.append(proc)
        assert proc.port > 0
        return proc

    def run(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run one to completion (for servers that must refuse to start)."""
        return run_command(server_cli_command(*self.argv(*args)), timeout=timeout,
                           env=clean_env())

    def login(self, proc: ServerProcess, token: str, *, client_id: str | None = None,
              resume: tuple[str, int] | None = None, rcvbuf: int | None = None
              ) -> tuple[WireClient, dict[str, Any]]:
        wire = tls_connect(proc.port, self.certs.client_context(), rcvbuf=rcvbuf)
        self.wires.append(wire)
        auth: dict[str, Any] = {"type": "auth", "token": token}
        if client_id is not None:
            auth["client"] = client_id
        if resume is not None:
            auth["resume"] = {"epoch": resume[0], "seq": resume[1]}
        wire.send(auth)
        return wire, wire.expect("welcome")

    def close(self) -> None:
        for wire in self.wires:
            wire.close()
        for proc in self.procs:
            proc.kill()
