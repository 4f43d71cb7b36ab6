"""securechat-token add --rooms/--read-only, grant, ungrant and list, through its main()
on real files, and once as a real process."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from securechat.cli import token as token_cli
from securechat.grants import Grants
from securechat.server.tokens import load_store
from tests.cli.token_support import no_token_env, run_token  # noqa: F401
from tests.support import clean_env, run_command, token_cli_command


def _grants(path: Path, name: str) -> list[Grants | None]:
    return [r.grants for r in load_store(path) if r.name == name]


def test_add_without_rooms_is_the_default_room(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """No --rooms: grants None (the server's default room), listed as such."""
    path = tmp_path / "tokens.json"
    code, out, err = run_token(capsys, path, "add", "alice")
    assert code == 0 and out.startswith("sct1.") and "(default room)" in err
    assert _grants(path, "alice") == [None]
    code, out, _ = run_token(capsys, path, "list")
    assert code == 0
    name, token_id, _, grants = out.strip().split("\t")
    assert (name, grants) == ("alice", "(default room)") and len(token_id) == 12


def test_add_with_rooms_and_read_only(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """--rooms takes comma-separated globs ('#' dropped); --read-only makes them ro,
    and alone makes the default room (--room) read-only."""
    path = tmp_path / "tokens.json"
    assert run_token(capsys, path, "add", "bot", "--rooms", "#general, ops,team-*")[0] == 0
    assert run_token(capsys, path, "add", "auditor", "--rooms", "*", "--read-only")[0] == 0
    assert run_token(capsys, path, "add", "viewer", "--read-only", "--room", "main")[0] == 0
    assert _grants(path, "bot") == [Grants({"general": "rw", "ops": "rw", "team-*": "rw"})]
    assert _grants(path, "auditor") == [Grants({"*": "ro"})]
    assert _grants(path, "viewer") == [Grants({"main": "ro"})]
    code, out, _ = run_token(capsys, path, "list")
    assert code == 0
    rows = {line.split("\t")[0]: line.split("\t")[3] for line in out.splitlines()}
    assert rows == {"auditor": "*:ro", "bot": "general:rw,ops:rw,team-*:rw",
                    "viewer": "main:ro"}


def test_read_only_default_room_comes_from_the_environment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--room defaults to SECURECHAT_ROOM (the server's variable for --room), else lobby."""
    path = tmp_path / "tokens.json"
    assert run_token(capsys, path, "add", "a", "--read-only")[0] == 0
    monkeypatch.setenv("SECURECHAT_ROOM", "town-square")
    assert run_token(capsys, path, "add", "b", "--read-only")[0] == 0
    assert _grants(path, "a") == [Grants({"lobby": "ro"})]
    assert _grants(path, "b") == [Grants({"town-square": "ro"})]


@pytest.mark.parametrize(("args", "needle"), [
    (("add", "alice", "--rooms", "general,Ops"), "'Ops': room names are lower case"),
    (("add", "alice", "--rooms", "gen eral"), "'gen eral'"),
    (("add", "alice", "--rooms", ","), "no room pattern"),
    (("add", "alice", "--rooms", ",".join(f"r{i}" for i in range(257))), "at most 256"),
    (("add", "alice", "--read-only", "--room", "Main"), "room names are lower case"),
    (("add", "a b"), "invalid name 'a b'"),
    (("grant", "alice", "ops,-x"), "'-x'"),
    (("grant", "alice", "ops/dev"), "'ops/dev'"),
    (("ungrant", "alice", "OPS"), "'OPS'"),
])
def test_bad_patterns_and_names_are_usage_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
        needle: str) -> None:
    """A bad pattern, room or name exits 2 with a message naming it on stderr; the file
    is not changed."""
    path = tmp_path / "tokens.json"
    assert run_token(capsys, path, "add", "alice")[0] == 0
    before = path.read_bytes()
    code, out, err = run_token(capsys, path, *args)
    assert code == 2 and needle in err and not out.strip()
    assert path.read_bytes() == before


def test_grant_and_ungrant_round_trip(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """grant adds or replaces modes on every token of a name (a token without grants
    first gets --room), prints the new grants; ungrant takes them away again."""
    path = tmp_path / "tokens.json"
    run_token(capsys, path, "add", "alice")
    run_token(capsys, path, "add", "alice", "--rooms", "dev")
    run_token(capsys, path, "add", "bob")
    code, out, _ = run_token(capsys, path, "grant", "alice", "ops,team-*", "--room", "main")
    assert code == 0
    lines = sorted(line.split("\t")[2] for line in out.splitlines())
    assert lines == ["dev:rw,ops:rw,team-*:rw", "main:rw,ops:rw,team-*:rw"]
    code, out, _ = run_token(capsys, path, "grant", "alice", "ops", "--read-only", "--room", "main")
    assert code == 0 and out.count("ops:ro") == 2
    assert sorted(map(str, _grants(path, "alice"))) == sorted(map(str, [
        Grants({"dev": "rw", "ops": "ro", "team-*": "rw"}),
        Grants({"main": "rw", "ops": "ro", "team-*": "rw"})]))
    assert _grants(path, "bob") == [None]
    code, out, err = run_token(capsys, path, "ungrant", "alice", "ops,team-*", "--room", "main")
    assert code == 0 and not err
    assert sorted(_grants(path, "alice"), key=str) == [Grants({"dev": "rw"}),
                                                        Grants({"main": "rw"})]


def test_grant_and_ungrant_one_token_by_id(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An id changes that token only; the other token of the same name keeps its grants."""
    path = tmp_path / "tokens.json"
    run_token(capsys, path, "add", "alice")
    run_token(capsys, path, "add", "alice")
    first, second = (r.id for r in load_store(path))
    code, out, _ = run_token(capsys, path, "grant", first, "ops")
    assert code == 0 and out == f"alice\t{first}\tlobby:rw,ops:rw\n"
    got = load_store(path).get(second)
    assert got is not None and got.grants is None
    code, out, _ = run_token(capsys, path, "ungrant", first, "lobby")
    assert code == 0 and out == f"alice\t{first}\tops:rw\n"


def test_ungrant_warns_about_patterns_not_held(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A pattern a token does not hold is a warning; nothing changed anywhere is exit 1;
    patterns are exact (ungranting team-a leaves team-*)."""
    path = tmp_path / "tokens.json"
    run_token(capsys, path, "add", "alice", "--rooms", "ops,team-*")
    code, out, err = run_token(capsys, path, "ungrant", "alice", "ops,nope")
    assert code == 0 and "warning" in err and "'nope'" in err and "'ops'" not in err
    assert out.split("\t")[2] == "team-*:rw\n"
    before = path.read_bytes()
    code, out, err = run_token(capsys, path, "ungrant", "alice", "team-a")
    assert code == 1 and "nothing changed" in err and "'team-a'" in err and not out
    assert path.read_bytes() == before
    code, out, err = run_token(capsys, path, "ungrant", "alice", "team-*")
    assert code == 0 and out.split("\t")[2] == "(none)\n" and "can enter no room" in err


def test_unknown_token_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """grant/ungrant of a name or id with no token: exit 1, the file untouched."""
    path = tmp_path / "tokens.json"
    run_token(capsys, path, "add", "alice")
    for command in ("grant", "ungrant"):
        code, out, err = run_token(capsys, path, command, "nobody", "ops")
        assert code == 1 and "no token for 'nobody'" in err and not out


def test_grant_keeps_the_file_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokens file made 0640 stays 0640 through grant and ungrant."""
    path = tmp_path / "tokens.json"
    run_token(capsys, path, "add", "alice")
    path.chmod(0o640)
    assert run_token(capsys, path, "grant", "alice", "ops")[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert run_token(capsys, path, "ungrant", "alice", "ops")[0] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_help_documents_grants(capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows the new commands, examples and that changes apply within 2 s."""
    with pytest.raises(SystemExit):
        token_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("grant", "ungrant", "--rooms 'general,team-*'", "--read-only",
                   "within 2 seconds", "--room"):
        assert needle in text
    with pytest.raises(SystemExit):
        token_cli.main(["grant", "--help"])
    assert "SECURECHAT_ROOM" in " ".join(capsys.readouterr().out.split())


def test_real_process_add_grant_list(tmp_path: Path) -> None:
    """The command as a process: SECURECHAT_ROOM and SECURECHAT_TOKENS from the
    environment, usage errors exit 2 on stderr."""
    path = tmp_path / "tokens.json"
    env = clean_env(SECURECHAT_TOKENS=str(path), SECURECHAT_ROOM="main")
    added = run_command(token_cli_command("add", "carol", "--quiet"), env=env)
    assert added.returncode == 0 and added.stdout.startswith("sct1.") and not added.stderr
    granted = run_command(token_cli_command("grant", "carol", "#ops", "--read-only"), env=env)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.split("\t")[2] == "main:rw,ops:ro\n"
    listed = run_command(token_cli_command("list"), env=env)
    assert listed.returncode == 0 and listed.stdout.split("\t")[3] == "main:rw,ops:ro\n"
    bad = run_command(token_cli_command("grant", "carol", "Ops"), env=env)
    assert bad.returncode == 2 and "'Ops'" in bad.stderr and not bad.stdout
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_store(path).verify(added.stdout.strip()) is not None
