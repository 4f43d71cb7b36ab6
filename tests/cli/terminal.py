"""``securechat-client`` on a pseudo-terminal (pexpect), for the interactive tests."""

from __future__ import annotations

import pexpect

from tests.client_support import cli_command, cli_env
from tests.support import seconds


class Terminals:
    """Spawns the client on 100x24 ptys; :meth:`close` (a fixture's teardown) kills
    and closes what is left."""

    def __init__(self) -> None:
        self.children: list[pexpect.spawn] = []

    def spawn(self, *cli: str) -> pexpect.spawn:
        # No cursor-position requests: nothing on the other side of this pty answers them.
        env = cli_env(PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm")
        program, *args = cli_command(*cli)
        child = pexpect.spawn(program, args, env=env, encoding="utf-8", timeout=seconds(10),
                              dimensions=(24, 100))
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            if child.isalive():
                child.terminate(force=True)
            child.close()

