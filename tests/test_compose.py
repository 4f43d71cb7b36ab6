"""docker-compose.yml, for real: a private Docker engine, ``docker-compose up`` as a user
types it, alice's and bob's messages crossing the server over TLS in #general, and a
read-only watcher that joined every room it may enter and saw them.

The file is always validated (``docker-compose config -q``: no engine needed). The
real run is marked ``docker``; it starts dockerd on a private socket with
``scripts/docker-engine.sh`` (the base image is built with debootstrap once and
cached) and skips, with the reason, only where the engine cannot start. With
SECURECHAT_REQUIRE_DOCKER=1 (set by .ci/run) it fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import seconds

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENGINE = ROOT / "scripts" / "docker-engine.sh"
REQUIRE = os.environ.get("SECURECHAT_REQUIRE_DOCKER") == "1"
BOT_MESSAGES = 3
#: The cluster profile's clients: each bot pinned to one node, carol through HAProxy.
CLUSTER = ("alice-node1", "bob-node2", "carol-lb")
#: ``alice_1 | text`` (docker-compose 1.29) or ``alice-1  | text`` (Compose v2).
LOG_LINE = re.compile(r"^(?P<service>[\w.-]+?)[-_]\d+\s+\| ?(?P<text>.*)$")
#: ``proj_alice_1 exited with code 0`` (1.29) or ``alice-1 exited with code 0`` (v2).
EXITED = re.compile(r"\b(?P<service>[\w.-]+?)[-_]\d+ exited with code (?P<code>\d+)")


def _unavailable(reason: str) -> None:
    """Skip, or fail where the docker test is required (CI)."""
    if REQUIRE:
        pytest.fail(f"SECURECHAT_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


def _compose_commands() -> list[list[str]]:
    """Every Compose implementation on this machine: Debian's docker-compose 1.29 and/or
    the v2 plugin (``docker compose``)."""
    found = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30,
            check=False).returncode == 0:
        found.append(["docker", "compose"])
    return found


# ---------------------------------------------------------------------- no engine needed
def test_compose_file_is_valid() -> None:
    """``config -q`` with every Compose found, with and without the interactive profile."""
    commands = _compose_commands()
    if not commands:
        _unavailable("neither docker-compose nor docker compose is installed "
                     "(apt-get install docker-compose)")
    for command in commands:
        for extra in ([], ["--profile", "interactive"], ["--profile", "cluster"]):
            result = subprocess.run(
                [*command, "-f", str(COMPOSE_FILE), *extra, "config", "-q"],
                capture_output=True, text=True, timeout=60, check=False,
                env={**os.environ, "COMPOSE_PROJECT_NAME": "securechat-config-check"})
            assert result.returncode == 0, (command, extra, result.stderr)
            assert "WARN" not in result.stderr.upper(), result.stderr


def test_compose_file_wiring() -> None:
    """The pieces the README promises, as Compose itself reads them; every service of
    the profile "cluster" carries it, so a plain ``up`` leaves them all out."""
    commands = _compose_commands()
    if not commands:
        _unavailable("docker-compose is not installed (apt-get install docker-compose)")
    result = subprocess.run([*commands[0], "-f", str(COMPOSE_FILE), "config"],
                            capture_output=True, text=True, timeout=60, check=True)
    config = result.stdout
    for service in ("init", "securechat", "alice", "bob", "watcher", "client"):
        assert re.search(rf"^  {service}:$", config, re.M), service
    assert "condition: service_completed_successfully" in config
    assert "condition: service_healthy" in config
    assert re.search(r"profiles:\n\s+- interactive", config)
    assert "healthcheck:" in config
    assert not re.search(r"SECURECHAT_TOKEN:", config), "tokens belong in the volume"
    assert "watcher:general,ops:ro" in config  # read-only, made by init
    assert "--all-rooms" in config and "--room" in config
    services = re.search(r"^services:\n((?:  .*\n)*)", config, re.M)
    assert services, config
    blocks = dict(re.findall(r"^  ([\w.-]+):\n((?:    .*\n)*)", services[1], re.M))
    in_cluster = {name for name, body in blocks.items()
                  if re.search(r"profiles:\n\s+- cluster\n", body)}
    assert in_cluster == {*CLUSTER, "redis", "node1", "node2", "balancer"}, blocks.keys()
    assert re.search(r"- --appendonly\n\s+- \W?yes", blocks["redis"]), blocks["redis"]
    assert "node1 node2 balancer" in blocks["init"]  # names in the server certificate


# ---------------------------------------------------------------------- the real run
@dataclass
class Engine:
    env: dict[str, str]
    state: Path


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A private dockerd for this module, stopped by its PID at the end."""
    if not shutil.which("docker-compose"):
        _unavailable("docker-compose is not installed (apt-get install docker-compose)")
    # Short path: containerd's socket lives below it (unix socket paths max 107 bytes).
    state = Path(tempfile.mkdtemp(prefix="scd-", dir="/tmp"))
    started = time.monotonic()
    result = subprocess.run(["bash", str(ENGINE), "start", str(state)], capture_output=True,
                            text=True, timeout=600, check=False)
    try:
        if result.returncode == 3:
            _unavailable(result.stderr.strip().splitlines()[-1])
        assert result.returncode == 0, f"engine did not start:\n{result.stderr}"
        host = result.stdout.strip().rsplit("=", 1)[1]
        print(f"engine ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield Engine({**os.environ, "DOCKER_HOST": host}, state)
    finally:
        subprocess.run(["bash", str(ENGINE), "stop", str(state)], capture_output=True,
                       timeout=120, check=False)
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Run:
    """What ``docker-compose up`` printed, by service, and how the containers ended."""

    project: str
    output: list[str] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: service -> (StartedAt, FinishedAt), RFC 3339 with nanoseconds, from docker inspect
    states: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: what the interactive client printed, and its exit status
    interactive: tuple[str, int | None] = ("", None)

    def lines(self, service: str) -> list[str]:
        return [m["text"] for line in self.output
                if (m := LOG_LINE.match(line)) and m["service"] == service]

    def server_lines(self) -> list[str]:
        """The server's whole log, read after it stopped."""
        return [m["text"] for line in self.extra["server_log"].stdout.splitlines()
                if (m := LOG_LINE.match(line))]

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.output[-n:])


def _compose(engine: Engine, project: str, *args: str, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "-p", project, *args],
        capture_output=True, text=True, timeout=seconds(timeout), check=False, env=engine.env)


def _docker(engine: Engine, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True,
                          timeout=seconds(timeout), check=False, env=engine.env)


def _inspect(engine: Engine, run: Run, service: str) -> None:
    """Record a service's container exit code and start/finish times."""
    ids = _compose(engine, run.project, "ps", "-q", service).stdout.split()
    state = _docker(engine, "inspect", "-f",
                    "{{.State.ExitCode}} {{.State.StartedAt}} {{.State.FinishedAt}}", *ids[:1])
    code, started, finished = [*state.stdout.split(), "-1", "", ""][:3]
    run.exit_codes[service] = int(code)
    run.states[service] = (started, finished)


def _interactive_session(engine: Engine, run: Run) -> tuple[str, int | None]:
    """``docker compose run --rm client`` on a terminal (a pty): the prompt comes up as
    carol, shows what another session of carol sends (``run --rm -T client ... --send``,
    kept in ``run.extra["carol"]``), and ``/quit`` leaves with exit 0.
    PROMPT_TOOLKIT_NO_CPR: pexpect's terminal does not answer cursor-position requests."""
    import pexpect

    child = pexpect.spawn(
        "docker-compose", ["-f", str(COMPOSE_FILE), "-p", run.project, "run", "--rm",
                           "-e", "PROMPT_TOOLKIT_NO_CPR=1", "client"],
        env=engine.env, encoding="utf-8", timeout=seconds(60), dimensions=(24, 120))
    try:
        child.expect("connected to securechat:7443 as carol")
        child.expect("carol>")
        run.extra["carol"] = _compose(
            engine, run.project, "run", "--rm", "-T", "client",
            "securechat-client", "--send", "hello from carol", timeout=seconds(120))
        child.expect("carol: hello from carol")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
        child.close()
        return child.before or "", child.exitstatus
    except pexpect.ExceptionPexpect as exc:
        pytest.fail(f"interactive client: {exc}\n{child.before!r}")
    finally:
        if child.isalive():
            child.terminate(force=True)


def _operate(engine: Engine, run: Run) -> None:
    """What README's "Operating securechat" shows for compose: add a token in the
    running server's volume, reach the server from this machine through the published
    port with the volume's CA, list and revoke the token."""
    exec_ = ("exec", "-T", "securechat")
    run.extra["add"] = add = _compose(engine, run.project, *exec_, "securechat-token",
                                      "add", "dave", "--quiet")
    run.extra["port"] = port = _compose(engine, run.project, "port", "securechat", "7443")
    ca = _compose(engine, run.project, *exec_, "cat", "/data/server/certs/ca.pem")
    with tempfile.TemporaryDirectory() as tmp:
        ca_file = Path(tmp) / "ca.pem"
        ca_file.write_text(ca.stdout)
        host, _, number = port.stdout.strip().rpartition(":")
        run.extra["from_host"] = subprocess.run(
            [sys.executable, "-m", "securechat.cli.client", "--host", host, "--port", number,
             "--ca", str(ca_file), "--server-name", "localhost", "--max-retries", "3",
             "--send", "hello from this machine"],
            capture_output=True, text=True, timeout=seconds(60), check=False,
            env={**os.environ, "SECURECHAT_TOKEN": add.stdout.strip()})
    run.extra["list"] = _compose(engine, run.project, *exec_, "securechat-token", "list")
    run.extra["revoke"] = _compose(engine, run.project, *exec_, "securechat-token", "revoke",
                                   "dave")
    # README: the log is in the volume "messages", so a restart loses nothing.
    run.extra["restart"] = _compose(engine, run.project, "restart", "securechat")
    deadline = time.monotonic() + seconds(60)
    while time.monotonic() < deadline:
        logs = _compose(engine, run.project, "logs", "--no-color", "securechat")
        if logs.stdout.count("event=listen") >= 2:
            break
        time.sleep(0.5)  # polling another process's log, bounded by the deadline


def _watch_up(proc: subprocess.Popen[str], run: Run, bots_done: threading.Event,
              bots: frozenset[str] = frozenset({"alice", "bob"})) -> None:
    """Collect compose's output; set ``bots_done`` once every one of ``bots`` exited."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        run.output.append(line)
        m = EXITED.search(line)
        if m and (service := m["service"].rsplit("_", 1)[-1]) in bots:
            run.exit_codes[service] = int(m["code"])
            if bots <= run.exit_codes.keys():
                bots_done.set()


def _stop_compose(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a user would; if compose does not finish, kill its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=seconds(60))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _build_and_up(engine: Engine, run: Run, profile: tuple[str, ...],
                  bots: frozenset[str], name: str
                  ) -> tuple[subprocess.Popen[str], threading.Thread, threading.Event]:
    """Wheels, ``build``, then ``up`` attached (as the README says), its output read on a
    thread that sets the event once every one of ``bots`` exited."""
    t0 = time.monotonic()
    wheels = subprocess.run(["bash", str(ROOT / "scripts" / "docker-wheels.sh")],
                            capture_output=True, text=True, timeout=300, check=False,
                            env={**engine.env, "PY": sys.executable})
    assert wheels.returncode == 0, wheels.stderr
    build = _compose(engine, run.project, *profile, "build", timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    run.timings["build"] = time.monotonic() - t0
    proc = subprocess.Popen(
        ["docker-compose", "-f", str(COMPOSE_FILE), "-p", run.project, *profile, "up",
         "--no-color"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=engine.env, start_new_session=True)
    bots_done = threading.Event()
    reader = threading.Thread(target=_watch_up, args=(proc, run, bots_done, bots), name=name)
    reader.start()
    return proc, reader, bots_done


@pytest.fixture(scope="module")
def compose_run(engine: Engine) -> Iterator[Run]:
    """Build, ``up`` (attached, as the README says), wait for the bots to finish, run
    the interactive client's service once, then Ctrl-C and ``down -v``."""
    run = Run(project=f"sctest{os.getpid()}")
    proc, reader, bots_done = _build_and_up(engine, run, (), frozenset({"alice", "bob"}),
                                            "compose-up-reader")
    t1 = time.monotonic()
    try:
        if not bots_done.wait(seconds(180)):
            pytest.fail(f"alice and bob did not both finish within 180 s:\n{run.tail()}")
        run.timings["up_to_bots_done"] = time.monotonic() - t1
        _inspect(engine, run, "init")  # now: `run client` below starts init again
        run.interactive = _interactive_session(engine, run)
        _operate(engine, run)
        run.extra["modes"] = _compose(
            engine, run.project, "run", "--rm", "--no-deps", "--entrypoint", "sh", "init",
            "-c", "stat -c '%a %u %n' /data/server/certs/*.key /data/server/tokens.json "
                  "/data/client/*.token")
        t2 = time.monotonic()
        _stop_compose(proc)
        run.timings["ctrl_c_to_stopped"] = time.monotonic() - t2
        reader.join(timeout=30)
        # `up` stops following logs at Ctrl-C; the server's last lines come from `logs`.
        run.extra["server_log"] = _compose(engine, run.project, "logs", "--no-color",
                                           "securechat")
        _inspect(engine, run, "securechat")
        yield run
    finally:
        _stop_compose(proc)
        reader.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        _compose(engine, run.project, "down", "-v", "--remove-orphans", timeout=120)
        print(f"compose timings (s): { {k: round(v, 1) for k, v in run.timings.items()} }",
              file=sys.stderr)


def _watched(lines: list[str]) -> list[dict[str, object]]:
    """The JSON events the watcher printed (its state lines on stderr are not JSON)."""
    events = []
    for line in lines:
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _said(lines: list[str], speaker: str) -> list[int]:
    """The numbers of ``speaker``'s bot messages in a client's output lines
    (``12:01:03 bob: hello from bob #1``)."""
    pattern = re.compile(rf"\b{speaker}: hello from {speaker} #(\d+)$")
    return sorted(int(m[1]) for line in lines if (m := pattern.search(line)))


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_alice_and_bob_talk_over_tls(compose_run: Run) -> None:
    """Each bot printed every message of the other: they crossed the server."""
    run = compose_run
    expected = list(range(1, BOT_MESSAGES + 1))
    assert _said(run.lines("alice"), "bob") == expected, run.tail()
    assert _said(run.lines("bob"), "alice") == expected, run.tail()
    assert run.exit_codes.get("alice") == 0 and run.exit_codes.get("bob") == 0, run.tail()
    for bot in ("alice", "bob"):  # --room general: they talked in #general
        assert any("joined #general" in line for line in run.lines(bot)), run.lines(bot)
    server = "\n".join(run.server_lines())
    assert "event=listen" in server and "tls_min=1.3" in server
    assert re.search(r"event=auth .*user=alice", server)
    assert re.search(r"event=auth .*user=bob", server)


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_watcher_saw_the_conversation_in_general(compose_run: Run) -> None:
    """The read-only watcher joined #general and #ops (--all-rooms: its grants) and
    saw every message of alice and bob, in #general: live, or as history when it
    joined after they started (--history)."""
    events = _watched(compose_run.lines("watcher"))
    joined = {e["room"] for e in events if e.get("type") == "joined"}
    assert joined == {"general", "ops"}, events[:20]
    seen = {(e["room"], e["from"], e["body"]) for e in events
            if e.get("type") in ("msg", "history_msg")}
    for speaker in ("alice", "bob"):
        for i in range(1, BOT_MESSAGES + 1):
            assert ("general", speaker, f"hello from {speaker} #{i}") in seen, sorted(seen)
    assert not any(room == "ops" for room, _, _ in seen)
    assert re.search(r"event=auth .*user=watcher", "\n".join(compose_run.server_lines()))


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_init_ran_once_before_the_server(compose_run: Run) -> None:
    """init made certificates and four tokens, and exited 0 before the server listened."""
    init = compose_run.lines("init")
    assert any("new development CA" in line for line in init), compose_run.tail()
    assert any("ready (4 tokens)" in line for line in init)
    assert compose_run.exit_codes.get("init") == 0
    # Same clock, same format (UTC, fixed width up to the seconds' fraction): compare
    # as strings to the microsecond.
    init_finished = compose_run.states["init"][1][:26]
    server_started = compose_run.states["securechat"][0][:26]
    assert init_finished <= server_started, compose_run.states


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_interactive_client_service_authenticates(compose_run: Run) -> None:
    """``docker compose run --rm client`` gives a prompt as carol that shows the room's
    messages, and ``run --rm -T client securechat-client --send ...`` sends one."""
    carol = compose_run.extra["carol"]
    assert carol.returncode == 0, carol.stdout + carol.stderr
    assert compose_run.interactive[1] == 0, compose_run.interactive
    assert re.search(r"event=auth .*user=carol", "\n".join(compose_run.server_lines()))


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_secrets_in_volumes_are_private(compose_run: Run) -> None:
    """Keys, the tokens file and token files: mode 0600, owned by the image's user."""
    modes = compose_run.extra["modes"]
    assert modes.returncode == 0, modes.stderr
    rows = [line.split() for line in modes.stdout.splitlines() if line.startswith(("6", "7"))]
    assert len(rows) == 2 + 1 + 4, modes.stdout
    assert all(mode == "600" and uid == "10001" for mode, uid, _ in rows), modes.stdout


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_ctrl_c_stops_the_server_cleanly(compose_run: Run) -> None:
    """Ctrl-C on ``up`` sends SIGTERM; the server says bye and exits 0 in time."""
    assert compose_run.exit_codes.get("securechat") == 0, compose_run.tail()
    server = compose_run.server_lines()
    assert any("event=stopped clean=True" in line for line in server), server[-20:]


@pytest.mark.docker
@pytest.mark.timeout(300)
def test_image_runs_as_non_root_and_holds_no_secrets(engine: Engine, compose_run: Run
                                                     ) -> None:
    """The image's user is 10001, and no key, token or source tree is baked in."""
    uid = _docker(engine, "run", "--rm", "--entrypoint", "id", "securechat:dev", "-u")
    assert uid.stdout.strip() == "10001", uid.stderr
    found = _docker(engine, "run", "--rm", "--entrypoint", "sh", "securechat:dev", "-c",
                    "find / -xdev \\( -name '*.key' -o -name '*.token' -o -name tokens.json "
                    "-o -path '*/docker/wheels' -o -path /src \\) -print 2>/dev/null; true")
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "", found.stdout


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_operating_the_compose_server(compose_run: Run) -> None:
    """Tokens are managed with ``docker compose exec securechat securechat-token ...``
    (no options: the image's environment names the file), and the server is reachable
    from this machine on the published loopback port, verified with the volume's CA."""
    extra = compose_run.extra
    assert extra["add"].returncode == 0 and extra["add"].stdout.startswith("sct1."), extra["add"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", extra["port"].stdout.strip()), extra["port"]
    host = extra["from_host"]
    assert host.returncode == 0, host.stdout + host.stderr
    assert re.search(r"^dave\t", extra["list"].stdout, re.M), extra["list"].stdout
    assert extra["revoke"].returncode == 0 and "revoked dave" in extra["revoke"].stdout
    assert re.search(r"event=auth .*user=dave", "\n".join(compose_run.server_lines()))


LISTEN = re.compile(r"event=listen .*store=(?P<store>\w+) epoch=(?P<epoch>\S+) seq=(?P<seq>\d+)")


@pytest.mark.docker
@pytest.mark.timeout(900)
def test_compose_restart_keeps_the_message_log(compose_run: Run) -> None:
    """``docker compose restart securechat``: the restarted server finds the same log
    (same epoch, seq goes on past the bots' messages) in the volume "messages"."""
    assert compose_run.extra["restart"].returncode == 0, compose_run.extra["restart"].stderr
    starts = [m for line in compose_run.server_lines() if (m := LISTEN.search(line))]
    assert len(starts) == 2, compose_run.server_lines()[-20:]
    first, second = starts
    assert (first["store"], second["store"]) == ("sqlite", "sqlite")
    assert second["epoch"] == first["epoch"]
    assert int(first["seq"]) == 0
    assert int(second["seq"]) >= 7  # alice's 3, bob's 3, this machine's 1 at least


# ---------------------------------------------------------------------- profile "cluster"
@pytest.fixture(scope="module")
def cluster_run(engine: Engine) -> Iterator[Run]:
    """``docker-compose --profile cluster up`` (attached): wait for the cluster's bots to
    finish, read Redis's AOF setting, then Ctrl-C, every log, and ``down -v``."""
    run = Run(project=f"sccluster{os.getpid()}")
    profile = ("--profile", "cluster")
    t0 = time.monotonic()
    proc, reader, bots_done = _build_and_up(engine, run, profile, frozenset(CLUSTER),
                                            "compose-cluster-reader")
    t1 = time.monotonic()
    try:
        if not bots_done.wait(seconds(180)):
            pytest.fail(f"{CLUSTER} did not all finish within 180 s:\n{run.tail()}")
        run.timings["up_to_bots_done"] = time.monotonic() - t1
        run.extra["aof"] = _compose(engine, run.project, *profile, "exec", "-T", "redis",
                                    "redis-cli", "config", "get", "appendonly")
        t2 = time.monotonic()
        _stop_compose(proc)
        run.timings["ctrl_c_to_stopped"] = time.monotonic() - t2
        reader.join(timeout=30)
        run.extra["logs"] = _compose(engine, run.project, *profile, "logs", "--no-color",
                                     "node1", "node2", "balancer")
        yield run
    finally:
        _stop_compose(proc)
        reader.join(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        t3 = time.monotonic()
        _compose(engine, run.project, *profile, "down", "-v", "--remove-orphans", timeout=120)
        run.timings["down"] = time.monotonic() - t3
        run.timings["total"] = time.monotonic() - t0
        print(f"cluster timings (s): { {k: round(v, 1) for k, v in run.timings.items()} }",
              file=sys.stderr)


def _logged(run: Run, service: str) -> str:
    """A service's whole log (``docker-compose logs``), without the service prefixes."""
    return "\n".join(m["text"] for line in run.extra["logs"].stdout.splitlines()
                     if (m := LOG_LINE.match(line)) and m["service"] == service)


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_cluster_alice_and_bob_talk_across_nodes(cluster_run: Run) -> None:
    """alice, on node1, and bob, on node2, waited for each other (presence across nodes)
    and each got every message of the other, live: they crossed Redis."""
    run = cluster_run
    expected = list(range(1, BOT_MESSAGES + 1))
    assert _said(run.lines("alice-node1"), "bob") == expected, run.tail()
    assert _said(run.lines("bob-node2"), "alice") == expected, run.tail()
    assert {run.exit_codes.get(bot) for bot in CLUSTER} == {0}, run.exit_codes
    node1, node2 = _logged(run, "node1"), _logged(run, "node2")
    assert re.search(r"event=auth .*user=alice", node1), node1[-2000:]
    assert re.search(r"event=auth .*user=bob", node2), node2[-2000:]
    assert not re.search(r"event=auth .*user=alice", node2)
    assert not re.search(r"event=auth .*user=bob", node1)


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_cluster_nodes_share_one_redis_with_aof(cluster_run: Run) -> None:
    """Both nodes started on the Redis store and found #general's one epoch there; Redis
    runs with appendonly on; both nodes stopped cleanly at Ctrl-C."""
    listen = re.compile(r"event=listen .*store=(?P<store>\S+) epoch=(?P<epoch>\S+)")
    starts = {node: [m for line in _logged(cluster_run, node).splitlines()
                     if (m := listen.search(line))] for node in ("node1", "node2")}
    assert all(len(found) == 1 for found in starts.values()), starts
    (first,), (second,) = starts.values()
    assert first["store"] == second["store"] == "redis://redis:6379/0", starts
    assert first["epoch"] == second["epoch"]
    aof = cluster_run.extra["aof"]
    assert aof.returncode == 0 and aof.stdout.split() == ["appendonly", "yes"], aof
    for node in ("node1", "node2"):
        assert "event=stopped clean=True" in _logged(cluster_run, node), node
    # Ctrl-C stops everything within a few seconds: nothing waits to be killed.
    assert cluster_run.timings["ctrl_c_to_stopped"] < seconds(8), cluster_run.timings


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_cluster_balancer_forwards_to_a_node(cluster_run: Run) -> None:
    """carol, through HAProxy (TLS end to end, the certificate names "balancer"), got
    her message acknowledged; HAProxy logged the connection going to node1 or node2."""
    assert cluster_run.exit_codes.get("carol-lb") == 0, cluster_run.lines("carol-lb")
    balancer = _logged(cluster_run, "balancer")
    assert re.search(r"chat nodes/node[12] ", balancer), balancer[-2000:]
    assert any(re.search(r"event=auth .*user=carol", _logged(cluster_run, node))
               for node in ("node1", "node2"))
