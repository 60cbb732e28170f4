"""The request body limit, enforced while the body streams in.

A declared ``Content-Length`` over the limit is answered 413 before any of the body is
read; a chunked body is counted as it arrives and cut off at the limit (the route never
sees the rest, and whatever it was about to answer is replaced by the 413).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facekd.serve.errors import error_body


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once the body passes the limit."""


class BodyLimit:
    """ASGI middleware answering 413 to a request body over ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send, size: str) -> None:
        body = json.dumps(error_body(
            "body_too_large",
            f"request body {size} is over this server's limit of {self.max_bytes / 2**20:g} MiB (--max-body-mb)",
        )).encode()
        await send({
            "type": "http.response.start", "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(send, f"of {declared} bytes")
                    return
        seen = 0
        over = False
        started = False

        async def counted_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the app's own answer to a cut-off body is dropped
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._reject(send, f"of more than {self.max_bytes} bytes")
