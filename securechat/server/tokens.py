"""Access tokens: creation, the tokens file, constant-time verification, change detection.

A token looks like ``sct1.<id>.<secret>``: ``id`` is 48 random bits that name the
token (shown by ``securechat-token list``, used in logs and to find the record),
``secret`` is 256 random bits. The file keeps only a salted SHA-256 of the secret:
a fast hash is enough because the secret is random, not a password, so it cannot
be guessed from its hash; a slow KDF would only make every login cost CPU.

A record may carry room grants (:class:`~securechat.grants.Grants`); one without
(``grants`` None, the format before rooms) may enter the server's default room only,
which only the server knows (``--room``): :func:`effective_grants` resolves it.

A record may also carry an expiry (``expires``, set by :func:`rotate_tokens` for the
grace period of a rotation): past it the token is treated as revoked, by the clock
alone, without the file changing.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from ..errors import ConfigError, TokenError
from ..grants import MAX_GRANTS, MODES, Grants, Mode, pattern_problem

__all__ = [
    "TokenFileWatcher",
    "TokenRecord",
    "TokenStore",
    "add_token",
    "check_permissions",
    "effective_grants",
    "grant_rooms",
    "load_store",
    "revoke_tokens",
    "rotate_tokens",
    "set_grants",
    "ungrant_rooms",
    "validate_name",
]

TOKEN_PREFIX: Final = "sct1"
FILE_VERSION: Final = 1
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_ID_RE: Final = re.compile(r"[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One token as stored: never the secret itself."""

    id: str
    name: str
    salt: bytes
    digest: bytes
    created: str
    #: What the token may join; None: the server's default room only (read and send).
    grants: Grants | None = None
    #: Unix time after which the token counts as revoked; None: it does not expire.
    expires: float | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id, "name": self.name, "salt": self.salt.hex(),
            "hash": "sha256:" + self.digest.hex(), "created": self.created,
        }
        if self.grants is not None:  # absent keeps files of tokens without grants as they were
            data["grants"] = dict(self.grants.items)
        if self.expires is not None:  # absent likewise: files without it load unchanged
            data["expires"] = format_time(self.expires)
        return data

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


_TIME_RE: Final = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,6})?Z")


def format_time(when: float) -> str:
    """UTC ISO 8601, ``2026-12-02T08:00:00Z``; milliseconds only where there are some
    (a grace of 1.5 s must not be rounded to whole seconds)."""
    millis = round(when * 1000)
    seconds, ms = divmod(millis, 1000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def parse_time(text: str) -> float:
    """The Unix time of a :func:`format_time` string; ValueError if it is not one."""
    match = _TIME_RE.fullmatch(text)
    if match is None:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        raise ValueError(text)
    whole = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return whole + float(match.group(7) or 0)


def effective_grants(record: TokenRecord, default_room: str) -> Grants:
    """The grants in force for ``record`` on a server whose default room is
    ``default_room``: its own, or ``{default_room: "rw"}`` for a token without any."""
    if record.grants is not None:
        return record.grants
    return _default_grants(default_room)


@functools.lru_cache(maxsize=16)
def _default_grants(room: str) -> Grants:
    # Grants are immutable: one shared object per room, not one per login.
    grants: dict[str, Mode] = {room: "rw"}
    return Grants(grants)


def validate_name(name: str) -> str:
    """A user name: 1-32 of letters, digits, ``_.-``, starting with a letter or digit."""
    if not _NAME_RE.fullmatch(name):
        raise TokenError(
            f"invalid name {name!r}: use 1-32 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("utf-8")).digest()


def split_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not _ID_RE.fullmatch(parts[1]):
        return None
    return parts[1], parts[2]


def new_token(name: str, grants: Grants | None = None) -> tuple[str, TokenRecord]:
    """A fresh random token and the record that stores its hash."""
    validate_name(name)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)  # 256 bits
    salt = secrets.token_bytes(16)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = TokenRecord(token_id, name, salt, _digest(salt, secret), created, grants)
    return f"{TOKEN_PREFIX}.{token_id}.{secret}", record


class TokenStore:
    """An immutable set of token records; safe to share between threads."""

    _DUMMY_SALT = bytes(16)
    _DUMMY_DIGEST = hashlib.sha256(b"securechat: no such token").digest()

    def __init__(self, records: list[TokenRecord] | tuple[TokenRecord, ...] = ()) -> None:
        self._by_id = {r.id: r for r in records}
        expiries = [r.expires for r in self._by_id.values() if r.expires is not None]
        #: The earliest expiry of any token (Unix time), None if none expires: a session
        #: looks at its own token's expiry only once the clock has passed this.
        self.next_expiry: float | None = min(expiries) if expiries else None

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, token_id: object) -> bool:
        """Whether a token with this id is still valid (sessions check this to notice
        revocation)."""
        return token_id in self._by_id

    def __iter__(self) -> Iterator[TokenRecord]:
        return iter(sorted(self._by_id.values(), key=lambda r: (r.name, r.created, r.id)))

    def ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def get(self, token_id: str) -> TokenRecord | None:
        """The record with this id, or None (a session looks up its token's grants
        after a reload with this)."""
        return self._by_id.get(token_id)

    def expired(self, token_id: str, now: float | None = None) -> bool:
        """Whether the token with this id has passed its expiry (``now``: Unix time,
        default the clock). Cheap while no token's expiry has come: one comparison."""
        if self.next_expiry is None:
            return False
        now = time.time() if now is None else now
        if now < self.next_expiry:
            return False
        record = self._by_id.get(token_id)
        return record is not None and record.expired(now)

    def verify(self, token: str) -> TokenRecord | None:
        """The record matching ``token``, or None (also for a token past its expiry).

        The id picks the record (ids are not secret); the secret is compared with
        :func:`hmac.compare_digest`, and an unknown id is compared against a dummy
        digest, so the time taken does not depend on how much of a secret matched.
        The expiry is looked at only after the comparison, so it changes nothing there.
        """
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        record = self._by_id.get(token_id)
        if record is None:
            hmac.compare_digest(_digest(self._DUMMY_SALT, secret), self._DUMMY_DIGEST)
            return None
        if hmac.compare_digest(_digest(record.salt, secret), record.digest):
            return None if record.expired(time.time()) else record
        return None

    # ------------------------------------------------------------------ file format
    @classmethod
    def from_json(cls, data: Any) -> TokenStore:
        """Check every field's type and shape: the file is edited by hand too, and a
        bad value must give a TokenError naming the entry, never another exception."""
        if (not isinstance(data, dict) or type(data.get("version")) is not int
                or data["version"] != FILE_VERSION):
            raise TokenError(f"not a securechat tokens file (version {FILE_VERSION})")
        items = data.get("tokens")
        if not isinstance(items, list):
            raise TokenError("tokens file: 'tokens' must be a list")
        records = []
        seen: set[str] = set()
        for index, item in enumerate(items):
            try:
                record = _record_from_json(item)
            except TokenError as exc:
                raise TokenError(f"tokens file: malformed entry {index}: {exc}") from None
            if record.id in seen:
                raise TokenError(f"tokens file: malformed entry {index}: duplicate id {record.id}")
            seen.add(record.id)
            records.append(record)
        return cls(records)

    def to_json(self) -> dict[str, Any]:
        return {"version": FILE_VERSION, "tokens": [r.to_json() for r in self]}


_HEX_RE: Final = re.compile(r"(?:[0-9a-f]{2})+")


def _record_from_json(item: Any) -> TokenRecord:
    if not isinstance(item, dict):
        raise TokenError(f"expected an object, got {type(item).__name__}")
    fields: dict[str, str] = {}
    for key in ("id", "name", "salt", "hash"):
        value = item.get(key)
        if not isinstance(value, str):
            raise TokenError(f"{key!r} must be a string")
        fields[key] = value
    created = item.get("created", "")
    if not isinstance(created, str):
        raise TokenError("'created' must be a string")
    if not _ID_RE.fullmatch(fields["id"]):
        raise TokenError("'id' must be 12 lowercase hex digits")
    if not _NAME_RE.fullmatch(fields["name"]):
        raise TokenError("'name' must be 1-32 of letters, digits, '_', '.' or '-'")
    if not _HEX_RE.fullmatch(fields["salt"]):
        raise TokenError("'salt' must be hex")
    scheme, _, digest = fields["hash"].partition(":")
    if scheme != "sha256" or len(digest) != 64 or not _HEX_RE.fullmatch(digest):
        raise TokenError(f"unknown hash scheme for id {fields['id']} (want sha256:<64 hex>)")
    expires = None
    if "expires" in item:
        value = item["expires"]
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            expires = parse_time(value)
        except ValueError:
            raise TokenError("'expires' must be a UTC time like \"2026-12-02T08:00:00Z\"") from None
    return TokenRecord(id=fields["id"], name=fields["name"], salt=bytes.fromhex(fields["salt"]),
                       digest=bytes.fromhex(digest), created=created,
                       grants=_grants_from_json(item["grants"]) if "grants" in item else None,
                       expires=expires)


def _grants_from_json(value: Any) -> Grants:
    if not isinstance(value, dict):
        raise TokenError("'grants' must be an object of room pattern to \"rw\" or \"ro\"")
    if len(value) > MAX_GRANTS:
        raise TokenError(f"'grants' holds {len(value)} patterns, more than {MAX_GRANTS}")
    pairs: list[tuple[str, Mode]] = []
    for pattern, mode in value.items():
        if (problem := pattern_problem(pattern)) is not None:
            raise TokenError(f"'grants': {problem}")
        if mode not in MODES:
            raise TokenError(f"'grants': mode of {pattern!r} must be \"rw\" or \"ro\", "
                             f"not {json.dumps(mode)}")
        pairs.append((pattern, mode))
    try:
        return Grants(pairs)
    except ValueError as exc:  # pragma: no cover - every case is checked above
        raise TokenError(f"'grants': {exc}") from None


#: Refused above this size: ~150 bytes a token, so room for ~400,000 tokens.
MAX_FILE_SIZE: Final = 64 * 1024 * 1024


def _check_mode(path: Path, mode: int) -> None:
    mode = stat.S_IMODE(mode)
    problems = []
    if mode & stat.S_IRWXO:
        problems.append("accessible by other users")
    if mode & stat.S_IWGRP:
        problems.append("writable by its group")
    if problems:
        # A writer could add a token of their own; a reader could copy the hashes.
        # Group-readable (0640) is fine: a secret shared with a service group.
        raise ConfigError(
            f"tokens file {path} is {' and '.join(problems)} (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def check_permissions(path: Path) -> None:
    """Refuse a tokens file that other users can read or write, or its group can write
    (0600 and 0640 are accepted)."""
    _check_mode(path, path.stat().st_mode)


def load_store(path: Path) -> TokenStore:
    """Read and check a tokens file. Every problem (missing, mode, not UTF-8, not JSON,
    nested too deep, wrong types) is a ConfigError or TokenError with the reason."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            _check_mode(path, st.st_mode)  # of the file read, not of a path raced with
            raw = f.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"tokens file {path} does not exist; create one with: "
            f"securechat-token add NAME --tokens {path}"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read tokens file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_FILE_SIZE:
        raise TokenError(f"tokens file {path} is larger than {MAX_FILE_SIZE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenError(f"tokens file {path} is not UTF-8 (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TokenError(f"tokens file {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise TokenError(f"tokens file {path} is not valid JSON: nested too deeply") from None
    try:
        return TokenStore.from_json(data)
    except TokenError as exc:
        raise TokenError(f"{exc} (in {path})") from None
    except RecursionError:  # pragma: no cover - from_json does not recurse; belt and braces
        raise TokenError(f"tokens file {path}: nested too deeply") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize writers (two ``securechat-token add`` at once) with a sidecar lock file."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_store(path: Path, store: TokenStore) -> None:
    """Write atomically (temp file + rename), so readers never see half a file. Mode 0600,
    or 0640 and the same group if the file was group-readable (a server running as a
    member of that group must still be able to read it after a revoke)."""
    mode, group = 0o600, -1
    with contextlib.suppress(OSError):
        st = os.stat(path)
        if st.st_mode & stat.S_IRGRP:
            mode, group = 0o640, st.st_gid
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(store.to_json(), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if group != -1:
            with contextlib.suppress(OSError):  # not a member of that group: stays ours
                os.chown(tmp, -1, group)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _load_or_empty(path: Path) -> TokenStore:
    return load_store(path) if path.exists() else TokenStore()


def add_token(path: Path, name: str, grants: Grants | None = None) -> tuple[str, TokenRecord]:
    """Create a token for ``name`` in the file at ``path`` (created if missing).

    A name may hold several tokens (one per device); each is revoked on its own
    or all at once. ``grants`` None: the server's default room only. Returns the
    token, which is never stored, and its record.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        store = _load_or_empty(path)
        token, record = new_token(name, grants)
        _write_store(path, TokenStore([*store, record]))
    return token, record


def revoke_tokens(path: Path, name_or_id: str) -> list[TokenRecord]:
    """Remove every token of a user, or the one token with that id; return what was removed."""
    with _locked(path):
        store = load_store(path)
        removed = [r for r in store if name_or_id in (r.name, r.id)]
        if removed:
            _write_store(path, TokenStore([r for r in store if r not in removed]))
    return removed


def rotate_tokens(path: Path, name_or_id: str, grace: float
                  ) -> tuple[str, TokenRecord, list[TokenRecord]] | None:
    """Issue a new token for the user of ``name_or_id`` (every token of that name, or the
    one token with that id), with the same grants, and make the old ones expire
    ``grace`` seconds from now (an earlier expiry they had is kept). Returns the new
    token, its record and the old records as they are now; None: no such token.

    Old tokens with different grants are refused (a TokenError): which grants the new
    one should get is then a choice to make by rotating them one id at a time."""
    with _locked(path):
        store = load_store(path)
        old = [r for r in store if name_or_id in (r.name, r.id)]
        if not old:
            return None
        if len({r.grants for r in old}) > 1:
            raise TokenError(f"the tokens of {old[0].name} hold different grants; rotate "
                             "them one token id at a time")
        expires = round(time.time() + grace, 3)
        marked = {r.id: replace(r, expires=expires if r.expires is None
                                else min(r.expires, expires)) for r in old}
        token, record = new_token(old[0].name, old[0].grants)
        _write_store(path, TokenStore([*(marked.get(r.id, r) for r in store), record]))
    return token, record, list(marked.values())


def set_grants(path: Path, name_or_id: str, change: Callable[[Grants], Grants],
               default_room: str) -> list[TokenRecord]:
    """Replace the grants of every token of a user, or of the one token with that id,
    by ``change(old)``; return the matching records as they are now (empty: no such
    token).

    A token without grants is first given ``{default_room: "rw"}``, what it had on a
    server with that ``--room``; it keeps None if ``change`` leaves that as it was.
    The file is rewritten (atomically, under the lock) only if some grants changed. A
    ValueError from ``change`` (too many grants) is a TokenError; the file stays as it
    was.
    """
    with _locked(path):
        store = load_store(path)
        updated: dict[str, TokenRecord] = {}
        for record in store:
            if name_or_id in (record.name, record.id):
                old = effective_grants(record, default_room)
                try:
                    grants = change(old)
                except ValueError as exc:
                    raise TokenError(f"token {record.id} of {record.name}: {exc}") from None
                updated[record.id] = record if grants == old else replace(record, grants=grants)
        if any(store.get(i) is not r for i, r in updated.items()):
            _write_store(path, TokenStore([updated.get(r.id, r) for r in store]))
    return list(updated.values())


def grant_rooms(path: Path, name_or_id: str, patterns: list[str], mode: Mode,
                default_room: str) -> list[TokenRecord]:
    """Give ``patterns`` the ``mode`` (replacing a mode they had), see :func:`set_grants`."""
    def change(old: Grants) -> Grants:
        return Grants({**dict(old.items), **dict.fromkeys(patterns, mode)})
    return set_grants(path, name_or_id, change, default_room)


def ungrant_rooms(path: Path, name_or_id: str, patterns: list[str],
                  default_room: str) -> list[tuple[TokenRecord, list[str]]]:
    """Remove exactly ``patterns`` (no glob expansion: ungranting ``team-*`` leaves
    ``team-a``); return each token's new record with the patterns it did not hold."""
    missing: list[list[str]] = []

    def change(old: Grants) -> Grants:
        held = dict(old.items)
        missing.append([p for p in patterns if p not in held])
        return Grants({p: m for p, m in held.items() if p not in patterns})
    # set_grants calls ``change`` once per record it returns, in the same order.
    records = set_grants(path, name_or_id, change, default_room)
    return list(zip(records, missing, strict=True))


class TokenFileWatcher:
    """Notices when the tokens file changes, by polling ``stat`` (works in Docker volumes
    and needs no signal). ``poll()`` returns a new store after a change, else None.

    A change that cannot be loaded keeps the old store: ``last_error`` then holds the
    reason, set once per change (the caller logs it and clears it), not on every poll.
    A read that failed with an OS error (EMFILE, EACCES) is tried again on the next
    poll, since the file itself may be fine."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = self._stat()
        self._retry = False
        self._reported: tuple[object, str] | None = None
        self.last_error: str | None = None

    def _stat(self) -> tuple[int, int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size, st.st_ctime_ns, st.st_mode)

    def poll(self) -> TokenStore | None:
        signature = self._stat()
        if signature == self._signature and not self._retry:
            return None
        self._signature = signature
        try:
            store = load_store(self.path)
        except (ConfigError, TokenError) as exc:
            message = str(exc)
            self._retry = isinstance(exc.__cause__, OSError)
            if (signature, message) != self._reported:
                self._reported = (signature, message)
                self.last_error = message
            return None
        self._retry = False
        self._reported = None
        self.last_error = None
        return store
