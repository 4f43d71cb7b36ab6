"""securechat-token rotate: a new token with the same grants, the old ones given an
expiry; through its main() on real files, and once as a real process. Plus the
expiry field of the tokens file and TokenStore's view of it (pure code)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from securechat.cli import token as token_cli
from securechat.errors import TokenError
from securechat.grants import Grants
from securechat.server.tokens import (
    TokenStore,
    add_token,
    format_time,
    load_store,
    parse_time,
)
from tests.cli.token_support import no_token_env, run_token  # noqa: F401
from tests.support import clean_env, run_command, token_cli_command


def test_rotate_prints_a_new_token_with_the_same_grants(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The new token is printed once and verifies; the old one gets now + grace in the
    file (and still verifies meanwhile); the grants are copied; others are untouched."""
    path = tmp_path / "tokens.json"
    old, old_record = add_token(path, "bot", Grants({"general": "rw", "team-*": "ro"}))
    add_token(path, "other")
    before = time.time()
    code, out, err = run_token(capsys, path, "rotate", "bot", "--grace", "10m")
    after = time.time()
    assert code == 0, err
    new = out.strip()
    assert new.startswith("sct1.") and new != old and "\n" not in new
    assert "shown only this once" in err and old_record.id in err
    store = load_store(path)
    new_record = store.verify(new)
    assert new_record is not None and new_record.name == "bot"
    assert new_record.grants == Grants({"general": "rw", "team-*": "ro"})
    assert new_record.expires is None
    marked = store.get(old_record.id)
    assert marked is not None and marked.expires is not None
    assert before + 600 - 0.01 <= marked.expires <= after + 600 + 0.01
    assert store.verify(old) == marked  # the grace: still good
    assert [r.expires for r in store if r.name == "other"] == [None]
    stored = json.loads(path.read_text())["tokens"]
    assert {t["id"]: "expires" in t for t in stored} == {
        r.id: r.id == old_record.id for r in store}


def test_rotate_by_id_marks_only_that_token(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    _, laptop = add_token(path, "alice")
    _, phone = add_token(path, "alice")
    code, out, _ = run_token(capsys, path, "rotate", laptop.id, "--grace", "0", "--quiet")
    assert code == 0 and out.startswith("sct1.")
    store = load_store(path)
    assert [r.name for r in store] == ["alice"] * 3
    marked = store.get(laptop.id)
    assert marked is not None and marked.expires is not None and marked.expires <= time.time()
    assert store.expired(laptop.id) and not store.expired(phone.id)
    new = store.verify(out.strip())
    assert new is not None and new.grants is None  # the default room, as the old one


def test_rotate_refuses_tokens_with_different_grants(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice", Grants({"a": "rw"}))
    add_token(path, "alice", Grants({"b": "rw"}))
    before = path.read_bytes()
    code, out, err = run_token(capsys, path, "rotate", "alice")
    assert code == 1 and out == "" and "one token id at a time" in err
    assert path.read_bytes() == before


def test_rotate_keeps_an_earlier_expiry(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Rotating again never lengthens an old token's grace."""
    path = tmp_path / "tokens.json"
    _, first = add_token(path, "alice")
    assert run_token(capsys, path, "rotate", "alice", "--grace", "60")[0] == 0
    expires = load_store(path).get(first.id)
    assert expires is not None and expires.expires is not None
    assert run_token(capsys, path, "rotate", "alice", "--grace", "2d")[0] == 0
    again = load_store(path).get(first.id)
    assert again is not None and again.expires == expires.expires
    assert len(load_store(path)) == 3


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("10m", 600), ("1h", 3600), ("2d", 172800), ("45", 45), ("1.5", 1.5),
    ("0", 0), ("0s", 0), (" 2H ", 7200),
])
def test_durations(text: str, seconds: float) -> None:
    assert token_cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "1w", "h", "1h30m", "1e3", "inf", "nan",
                                  "367d", "1..5"])
def test_bad_durations_exit_2_and_keep_the_file(
        text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    before = path.read_bytes()
    code, out, err = run_token(capsys, path, "rotate", "alice", "--grace", text)
    assert code == 2 and out == "" and "--grace" in err
    assert path.read_bytes() == before


def test_unknown_name_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    before = path.read_bytes()
    code, out, err = run_token(capsys, path, "rotate", "bob")
    assert code == 1 and out == "" and "no token for 'bob'" in err
    assert path.read_bytes() == before


def test_list_shows_the_expiry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fifth column only for tokens with an expiry: 'expires T', or 'expired T' once
    past (four-column readers of the others keep working)."""
    path = tmp_path / "tokens.json"
    _, first = add_token(path, "alice")
    _, second = add_token(path, "alice")
    assert run_token(capsys, path, "rotate", first.id, "--grace", "1h")[0] == 0
    assert run_token(capsys, path, "rotate", second.id, "--grace", "0")[0] == 0
    code, out, _ = run_token(capsys, path, "list")
    assert code == 0
    rows = {line.split("\t")[1]: line.split("\t") for line in out.splitlines()}
    assert len(rows) == 4
    store = load_store(path)
    for record in store:
        row = rows[record.id]
        if record.expires is None:
            assert len(row) == 4
        else:
            word = "expired" if record.id == second.id else "expires"
            assert row[4] == f"{word} {format_time(record.expires)}"


def test_help_documents_rotate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        token_cli.main(["--help"])
    out = capsys.readouterr().out
    assert "rotate" in out and "--grace" in out and "expir" in out


def test_real_process_rotate_and_list(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    env = clean_env(SECURECHAT_TOKENS=str(path))
    added = run_command(token_cli_command("add", "carol", "--quiet"), env=env)
    assert added.returncode == 0, added.stderr
    rotated = run_command(token_cli_command("rotate", "carol", "--grace", "90s"), env=env)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.startswith("sct1.") and rotated.stdout != added.stdout
    listed = run_command(token_cli_command("list"), env=env)
    assert listed.returncode == 0
    assert sorted(len(line.split("\t")) for line in listed.stdout.splitlines()) == [4, 5]
    assert "\texpires 20" in listed.stdout


# --------------------------------------------------------------------------- the file field
def test_time_format_round_trips() -> None:
    assert format_time(1796198400.0) == "2026-12-02T08:00:00Z"
    assert parse_time("2026-12-02T08:00:00Z") == 1796198400.0
    assert format_time(1796198401.5) == "2026-12-02T08:00:01.500Z"
    assert parse_time("2026-12-02T08:00:01.500Z") == 1796198401.5
    for bad in ("2026-12-02 08:00:00Z", "2026-12-02T08:00:00", "2026-13-02T08:00:00Z",
                "2026-12-02T24:00:00Z", "tomorrow"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_file_without_expiry_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token, _ = add_token(path, "alice")
    data = json.loads(path.read_text())
    assert data["version"] == 1 and "expires" not in data["tokens"][0]
    store = load_store(path)
    assert store.next_expiry is None and store.verify(token) is not None
    assert TokenStore.from_json(store.to_json()).to_json() == data


@pytest.mark.parametrize("value", [5, None, "soon", "2026-12-02"])
def test_bad_expiry_in_a_hand_edited_file(tmp_path: Path, value: object) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "alice")
    data = json.loads(path.read_text())
    data["tokens"][0]["expires"] = value
    with pytest.raises(TokenError, match="'expires' must be a UTC time"):
        TokenStore.from_json(data)


def test_store_expiry_by_the_clock(tmp_path: Path) -> None:
    """verify refuses a token past its expiry; next_expiry is the earliest one; expired()
    names only tokens past their own."""
    path = tmp_path / "tokens.json"
    token, record = add_token(path, "alice")
    data = json.loads(path.read_text())
    data["tokens"][0]["expires"] = format_time(time.time() - 1)
    past = TokenStore.from_json(data)
    assert past.next_expiry is not None and past.verify(token) is None
    assert record.id in past and past.expired(record.id) and not past.expired("0" * 12)
    data["tokens"][0]["expires"] = "2100-01-01T00:00:00Z"
    future = TokenStore.from_json(data)
    assert future.verify(token) is not None and not future.expired(record.id)
    assert future.next_expiry == parse_time("2100-01-01T00:00:00Z")
    assert future.expired(record.id, now=future.next_expiry)
