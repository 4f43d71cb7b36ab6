"""Running ``securechat-token`` in-process for the token command tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechat.cli import token as token_cli


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands read SECURECHAT_TOKENS and SECURECHAT_ROOM: not from the caller here
    (autouse in every module that imports it)."""
    monkeypatch.delenv("SECURECHAT_TOKENS", raising=False)
    monkeypatch.delenv("SECURECHAT_ROOM", raising=False)


def run_token(capsys: pytest.CaptureFixture[str], path: Path, *args: str
              ) -> tuple[int, str, str]:
    """``securechat-token ARGS --tokens PATH``: exit code, stdout, stderr."""
    try:
        code = token_cli.main([*args, "--tokens", str(path)])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
