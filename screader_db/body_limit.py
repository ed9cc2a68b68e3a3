"""An ASGI middleware that refuses request bodies over a size limit with 413 and a JSON error.

The declared ``Content-Length`` is checked before anything is read, and the bytes actually
received are counted while the body streams in, so a chunked upload (which declares no length)
cannot get past the limit either; bytes beyond a declared length never reach the application.
JSON bodies have a limit of their own, lower: they are parsed in memory, at many times their size
(see :mod:`screader_db.server_limits`), where an .h5ad upload streams to disk.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


class BodyTooLarge(Exception):
    """Raised inside the application when the streamed body passes the limit."""


class BodyLimit:
    """Wraps an ASGI app; ``max_bytes`` is the largest request body accepted, ``max_json_bytes``
    (default: the same) the largest ``application/json`` one."""

    def __init__(self, app: Any, *, max_bytes: int, max_json_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = max_bytes if max_json_bytes is None else max_json_bytes

    @staticmethod
    def _refusal(limit: int, size: int | None, json_body: bool) -> bytes:
        shown = f"{limit / 1e6:,.1f} MB" if limit >= 100_000 else f"{limit:,} bytes"
        found = "" if size is None else f" (it has {size / 1e6:,.1f} MB)"
        kind = "JSON body" if json_body else "request body"
        remedy = "send fewer cells per request, or send them as an .h5ad upload" if json_body else \
            "send fewer cells per request"
        message = f"the {kind} is larger than this server's limit of {shown}{found}; {remedy}"
        return json.dumps({"error": message}).encode()

    async def _send_refusal(self, send: Any, limit: int, size: int | None, json_body: bool) -> None:
        body = self._refusal(limit, size, json_body)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        json_body = _content_type(scope) == "application/json"
        limit = self.max_json_bytes if json_body else self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._send_refusal(send, limit, declared, json_body)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
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
                await self._send_refusal(send, limit, None, json_body)


def _content_length(scope: Message) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _content_type(scope: Message) -> str:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return bytes(value).decode("latin-1").split(";")[0].strip().lower()
    return ""
