"""The server's connections: half-open clients are closed on time and cannot starve others."""

import socket
import time
from contextlib import contextmanager

import httpx
from serving import running, small_atlas

from screader_db.server import create_app
from screader_db.server_limits import ServerLimits


@contextmanager
def _half_open(base, n):
    """``n`` connections that send the start of a request's headers and then nothing (closed on exit)."""
    host, port = base.removeprefix("http://").split(":")
    opened = []
    try:
        for _ in range(n):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            opened.append(sock)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def _closed(sock, wait):
    """Whether the server closed ``sock`` within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def test_half_open_connections_do_not_stop_health_and_are_closed(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    limits = ServerLimits(header_timeout=4.0, max_connections=400)
    with running(create_app(root), limits=limits) as base:
        with _half_open(base, 300) as stalled:
            began = time.monotonic()
            assert httpx.get(f"{base}/health", timeout=5).status_code == 200
            assert time.monotonic() - began < 1.0  # a server held up by them would answer only after their timeout
            time.sleep(3.5)
            assert all(_closed(sock, 3.0) for sock in stalled)
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200


def test_connections_beyond_the_cap_are_answered_503(tmp_path):
    root = small_atlas(tmp_path / "atlas")
    limits = ServerLimits(header_timeout=2.0, max_connections=20)
    with running(create_app(root), limits=limits) as base, _half_open(base, 20):
        with httpx.Client(timeout=5) as client:
            refused = client.get(f"{base}/health")
        assert refused.status_code == 503
        assert refused.json() == {"error": "the server has 20 open connections, its limit; try again shortly"}
        time.sleep(2.5)
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
