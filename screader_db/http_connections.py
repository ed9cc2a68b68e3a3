"""The server's HTTP connections: uvicorn with a header deadline and a cap on open connections.

uvicorn closes a connection that sits idle between requests (``timeout_keep_alive``) and bounds
the size of a request's headers (h11's incomplete-event limit), but it waits for ever for the
headers of a request that has begun, and accepts connections until the process runs out of file
descriptors. So a few thousand clients sending headers a byte at a time once starved every other
client (and filled the log with "Too many open files"). :class:`GuardedH11Protocol` closes a
connection whose request headers are not complete ``header_timeout`` seconds after it opened or
after its last response, and answers 503 to connections beyond ``max_connections`` and closes
them at once, while the process still has descriptors to spare.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from screader_db.server_limits import ServerLimits


def _busy(cap: int) -> bytes:
    body = json.dumps({"error": f"the server has {cap:,} open connections, its limit; try again shortly"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\nretry-after: 1\r\n\r\n")
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection cap (set on a subclass by
    :func:`server_config`)."""

    max_connections = 1000
    header_timeout = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept a connection and start its header deadline, or answer 503 and close it beyond the cap.

        Parameters
        ----------
        transport : asyncio.Transport
            The new connection.
        """
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_busy(self.max_connections))
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Cancel the header deadline, then let uvicorn clean up.

        Parameters
        ----------
        exc : Exception or None
            Why the connection was lost; None for an ordinary close.
        """
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """Restart the header deadline for the next request on a connection kept open."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        """Close the connection if it is still waiting for a request's headers."""
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Any, *, host: str, port: int, limits: ServerLimits, log_level: str = "info") -> Any:
    """The uvicorn configuration ``screader-db serve`` runs ``app`` with.

    Parameters
    ----------
    app : ASGI application
        The server's app.
    host : str
        The address to bind.
    port : int
        The port to bind.
    limits : ServerLimits
        Gives the connection cap (:meth:`ServerLimits.connection_cap`), the header deadline, the
        keep-alive and the header size limit.
    log_level : str
        uvicorn's log level.

    Returns
    -------
    uvicorn.Config
        With a :class:`GuardedH11Protocol` subclass carrying these limits as its ``http`` protocol.
    """
    import uvicorn

    protocol = type("GuardedH11Protocol", (GuardedH11Protocol,),
                    {"max_connections": limits.connection_cap(), "header_timeout": float(limits.header_timeout)})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          timeout_keep_alive=limits.keep_alive, h11_max_incomplete_event_size=limits.max_header_bytes)
