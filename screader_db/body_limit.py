"""An ASGI middleware that refuses request bodies over a size limit with 413 and a JSON error.

The declared ``Content-Length`` is checked before anything is read, and the bytes actually
received are counted while the body streams in, so a chunked upload (which declares no length)
cannot get past the limit either; bytes beyond a declared length never reach the application.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


class BodyTooLarge(Exception):
    """Raised inside the application when the streamed body passes the limit."""


class BodyLimit:
    """Wraps an ASGI app; ``max_bytes`` is the largest request body accepted."""

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _refusal(self, size: int | None) -> bytes:
        limit = f"{self.max_bytes / 1e6:,.1f} MB" if self.max_bytes >= 100_000 else f"{self.max_bytes:,} bytes"
        found = "" if size is None else f" (it has {size / 1e6:,.1f} MB)"
        message = (f"the request body is larger than this server's limit of {limit}{found}; send fewer cells per "
                   "request, or start the server with a larger --max-upload-mb")
        return json.dumps({"error": message}).encode()

    async def _send_refusal(self, send: Any, size: int | None) -> None:
        body = self._refusal(size)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._send_refusal(send, declared)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                await self._send_refusal(send, None)


def _content_length(scope: Message) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
