"""HTTP/1.1 for the admin endpoint, sans I/O: find and parse a request head, build a
response. Only what ``GET``/``HEAD`` of three fixed paths needs: no bodies, no
keep-alive (every response says ``Connection: close``), no chunking."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HeadError", "Request", "find_head", "parse_head", "response"]

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
_TOKEN_CHARS = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                         b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HeadError(Exception):
    """A request head we will not serve; ``status`` is the answer (400 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


def find_head(buffer: bytes | bytearray, max_head: int) -> int:
    """The length of the head (through the blank line) if ``buffer`` holds all of it,
    else -1; :class:`HeadError` 431 once it cannot fit in ``max_head`` bytes."""
    end = buffer.find(b"\r\n\r\n", 0, max_head + 4)
    if end < 0:
        end = buffer.find(b"\n\n", 0, max_head + 2)  # bare LF, as tolerant servers do
        if end >= 0:
            return end + 2
        if len(buffer) > max_head:
            raise HeadError(431, f"request head over {max_head} bytes")
        return -1
    return end + 4


def parse_head(head: bytes) -> Request:
    """The method, the path (query string dropped) and the headers (names lowercased;
    a repeated one keeps the last). :class:`HeadError` 400 on anything malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HeadError(400, "undecodable head") from None
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HeadError(400, "bad request line")
    method, target, _version = parts
    if not method or not set(method.encode()) <= _TOKEN_CHARS:
        raise HeadError(400, "bad method")
    if not target.startswith("/"):
        raise HeadError(400, "bad request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name.encode()) <= _TOKEN_CHARS:
            raise HeadError(400, "bad header line")
        headers[name.lower()] = value.strip()
    return Request(method, target.split("?", 1)[0], headers)


def response(status: int, body: bytes = b"", *, content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False, extra: dict[str, str] | None = None) -> bytes:
    """A whole response; ``head_only`` (HEAD) keeps Content-Length but sends no body."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Cache-Control: no-store", "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in (extra or {}).items())
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body
