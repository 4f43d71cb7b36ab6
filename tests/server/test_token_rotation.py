"""Token rotation over real TLS: the old token works during its grace, the new one
works, and past the expiry the old one is refused at login and its live sessions are
closed with ``revoked``, by the clock alone (the tokens file does not change again)."""

from __future__ import annotations

import time
from typing import Any

from securechat.server.tokens import rotate_tokens
from tests.support import RunningServer, WireClient, seconds, wait_for

#: How soon after its expiry a live session must be closed: the tick (0.25 s) plus slack.
CLOSE_WITHIN = 1.0


def _rotate(server: RunningServer, name: str, grace: float) -> tuple[str, float]:
    """Rotate ``name``'s tokens (as ``securechat-token rotate`` does) and wait until the
    server has loaded the file; return the new token and the old ones' expiry."""
    result = rotate_tokens(server.tokens_path, name, grace)
    assert result is not None
    token, record, old = result
    expires = old[0].expires
    assert expires is not None
    wait_for(lambda: record.id in server.server.tokens, what="server to load the rotation")
    return token, expires


def _refused(server: RunningServer, token: str) -> list[dict[str, Any]]:
    client = server.tls_connect()
    client.send({"type": "auth", "token": token})
    return client.expect_closed()


def _closed_revoked(client: WireClient, expires: float) -> None:
    """``client`` is closed with ``error revoked`` saying the token expired: not before
    the expiry (a lower bound, so not scaled) and within CLOSE_WITHIN after it."""
    frames = client.expect_closed(timeout=seconds(5.0))
    closed_at = time.time()
    assert frames and frames[-1]["type"] == "error", frames
    assert frames[-1]["code"] == "revoked" and "expired" in frames[-1]["message"]
    assert closed_at >= expires
    assert closed_at - expires < seconds(CLOSE_WITHIN), f"{closed_at - expires:.2f} s late"


def test_old_token_works_during_the_grace_then_is_revoked(server: RunningServer) -> None:
    old = server.add_user("alice")
    bob, _ = server.user("bob")
    live, _ = server.login(old)
    assert bob.expect("join")["user"] == "alice"
    grace = seconds(1.5)
    new, expires = _rotate(server, "alice", grace)
    loaded = server.server.tokens

    # The grace: the old token still logs in and its session still sends; the new works.
    during, _ = server.login(old)
    assert time.time() < expires, "the grace was over before the checks (slow machine?)"
    live.send({"type": "msg", "body": "still here", "id": "m1"})
    assert live.expect("ack")["id"] == "m1"
    assert bob.expect("msg")["body"] == "still here"
    fresh, _ = server.login(new)

    # Past the expiry: both old sessions closed, by the clock, with the same file.
    _closed_revoked(live, expires)
    _closed_revoked(during, expires)
    assert server.server.tokens is loaded  # no reload was needed
    frames = _refused(server, old)
    assert [f.get("code") for f in frames] == ["auth_failed"]

    # The new token's session lives on, and it logs in again.
    fresh.send({"type": "msg", "body": "new token", "id": "m2"})
    assert fresh.expect("ack", skip=("ping", "msg"))["id"] == "m2"
    assert bob.expect("msg", skip=("ping", "leave", "join"))["body"] == "new token"
    again, welcome = server.login(new)
    assert "alice" in welcome["members"]
    again.close()


def test_zero_grace_closes_the_old_session_now(server: RunningServer) -> None:
    """``--grace 0``: the old token is refused at once and its session closed within
    a tick, although the session sends nothing."""
    old = server.add_user("carol")
    live, _ = server.login(old)
    new, expires = _rotate(server, "carol", 0.0)
    _closed_revoked(live, expires)
    assert [f.get("code") for f in _refused(server, old)] == ["auth_failed"]
    fresh, _ = server.login(new)
    fresh.close()


def test_other_tokens_are_not_touched(server: RunningServer) -> None:
    """A rotation of one user with a store-wide next expiry leaves other users' sessions
    alone after that expiry."""
    carol = server.add_user("carol")
    dave_live, _ = server.user("dave")
    _, expires = _rotate(server, "carol", 0.0)
    assert [f.get("code") for f in _refused(server, carol)] == ["auth_failed"]
    wait_for(lambda: time.time() >= expires + 0.5, timeout=2.0, what="a few ticks")
    dave_live.send({"type": "msg", "body": "fine", "id": "d1"})
    assert dave_live.expect("ack")["id"] == "d1"
