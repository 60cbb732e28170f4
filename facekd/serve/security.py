"""API keys and the rule that keeps ``facekd serve`` closed by default.

Keys come only from ``--api-key-file`` (none is built in). A server bound to anything
but loopback without a key file refuses to start. Keys are compared with
:func:`hmac.compare_digest` against every configured key, so the time taken says nothing
about which key, or how much of one, matched.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from facekd.errors import FacekdError
from facekd.io_utils import read_text_file
from facekd.serve.errors import ApiError, error_body

API_KEY_HEADER = "X-API-Key"
MIN_KEY_LENGTH = 16


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for every other address or name
    (a name could resolve anywhere, so it is treated as public)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def read_api_keys(path: Path) -> tuple[bytes, ...]:
    """The keys in ``path``: one a line, blank lines and ``#`` comments skipped.

    Raises:
        FacekdError: The file is missing or unreadable, holds no key, a key shorter
            than ``MIN_KEY_LENGTH`` characters, or one that is not printable ASCII.
    """
    text = read_text_file(path, "API key file")
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if len(key) < MIN_KEY_LENGTH:
            raise FacekdError(f"{path}: line {n}: API key shorter than {MIN_KEY_LENGTH} characters")
        if not (key.isascii() and key.isprintable()):  # else no X-API-Key header could ever match it
            raise FacekdError(f"{path}: line {n}: an API key must be printable ASCII (it is sent in a header)")
        keys.append(key.encode("utf-8"))
    if not keys:
        raise FacekdError(f"{path}: no API key in the file (one a line)")
    return tuple(keys)


def check_binding(host: str, api_key_file: Path | None) -> None:
    """Refuses a server reachable from other machines without API keys.

    Raises:
        FacekdError: ``host`` is not loopback and no key file was given.
    """
    if api_key_file is None and not is_loopback(host):
        raise FacekdError(
            f"refusing to serve on {host} without API keys: anything but loopback (127.0.0.1, ::1, localhost) "
            "needs --api-key-file FILE (one key a line, sent by clients as X-API-Key)"
        )


class ApiKeyCheck:
    """A FastAPI dependency: passes when no key is configured, else needs a valid ``X-API-Key``."""

    def __init__(self, keys: tuple[bytes, ...] = ()) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def matches(self, offered: str) -> bool:
        given = offered.encode("utf-8", "surrogateescape")
        ok = False
        for key in self._keys:  # every key compared: no early exit
            ok |= hmac.compare_digest(given, key)
        return ok

    async def __call__(self, request: Request) -> None:
        if not self._keys:
            return
        offered = request.headers.get(API_KEY_HEADER)
        if offered is None:
            raise ApiError(401, "missing_api_key", f"this server needs an API key: send it in the {API_KEY_HEADER} header")
        if not self.matches(offered):
            raise ApiError(401, "invalid_api_key", f"the {API_KEY_HEADER} header holds no valid API key")


def _netloc_host(netloc: str) -> str:
    """The host of ``host[:port]`` (brackets off an IPv6 address); '' when malformed."""
    try:
        return urlsplit(f"//{netloc}").hostname or ""
    except ValueError:
        return ""


def _origin_netloc(origin: str) -> str | None:
    """``host[:port]`` of an ``Origin`` header, lower case; None when malformed."""
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return None


class LoopbackOnly:
    """ASGI middleware for a server without API keys, which trusts whoever reaches it on
    loopback. A browser on the same machine reaches it too, driven by any page it opens:
    a request whose ``Host`` is not a loopback address or ``localhost`` is refused (a DNS
    rebinding page, which could otherwise read the answers), and so is one whose
    ``Origin`` is not this server (a cross-origin form POST, which needs no preflight).
    Requests without ``Origin`` (curl, scripts, same-origin GETs) pass.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def _refusal(scope: Scope) -> tuple[str, str] | None:
        headers = {k.decode(): v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"origin")}
        host, origin = headers.get("host", ""), headers.get("origin")
        if not is_loopback(_netloc_host(host)):
            return "host_not_loopback", f"Host {host!r} is not a loopback address: this server has no API keys"
        if origin is not None and _origin_netloc(origin) != host.lower():
            return "cross_origin", (f"a request from the page at {origin!r} is refused: this server has no API keys, "
                                    "so only its own page may call it from a browser")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps(error_body(*refusal)).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
