"""README's backup recipe, as written: the sqlite3 commands copy a running server's log,
and a server started on a restored copy keeps the backup's epoch and seq."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.support import MakeServer, publish, read_replay, run_command, stop_server

#: The two commands of README's "Messages: the data dir, durability and backups".
BACKUP = """sqlite3 data/messages.sqlite3 ".backup 'backup-$(date +%F).sqlite3'\""""
VACUUM = """sqlite3 data/messages.sqlite3 "VACUUM INTO 'backup.sqlite3'\""""


@pytest.fixture
def sqlite3_cli() -> str:
    found = shutil.which("sqlite3")
    if found is None:
        pytest.skip("the sqlite3 command is not installed (apt-get install sqlite3; "
                    ".ci/run installs it)")
    return found


def _stored(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return list(db.execute("SELECT seq, body FROM messages ORDER BY seq"))


def test_readme_backup_commands_copy_a_running_log_and_a_restore_keeps_its_epoch(
        make_server: MakeServer, tmp_path: Path, sqlite3_cli: str) -> None:
    """Both commands run as README writes them, beside a live server, and each copy
    holds every acknowledged message; restored, the log goes on from the backup."""
    data = tmp_path / "data"
    running = make_server(data_dir=data, msg_rate=0)
    alice, welcome = running.user("alice", client_id="a1")
    publish(alice, [f"m{i}" for i in range(5)])
    for command in (BACKUP, VACUUM):
        done = run_command(["sh", "-c", command], cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    backups = sorted(tmp_path.glob("backup*.sqlite3"))
    assert len(backups) == 2, backups
    for backup in backups:
        assert _stored(backup) == [(i + 1, f"m{i}") for i in range(5)]
    epoch = welcome["epoch"]
    stop_server(running)
    # Restore: replace the log and drop its WAL companions, then start again.
    for companion in ("messages.sqlite3-wal", "messages.sqlite3-shm"):
        (data / companion).unlink(missing_ok=True)
    shutil.copy(backups[0], data / "messages.sqlite3")
    again = make_server(data_dir=data, msg_rate=0)
    bob, welcome = again.user("bob", resume=(epoch, 2))
    assert (welcome["epoch"], welcome["seq"]) == (epoch, 5)
    replayed, caught_up = read_replay(bob)
    assert [m["body"] for m in replayed] == ["m2", "m3", "m4"]
    assert caught_up == {"type": "caught_up", "room": "lobby", "seq": 5, "replayed": 3}
