"""The server's front: every connection, bounded, without a thread per connection.

Python's ``ThreadingHTTPServer`` gives each connection a thread for as long as it is
open: 2,000 clients that send half a request line and wait (slowloris) held 2,000
threads and 290 MB, and nothing ever timed them out. Here one thread watches every
open connection (``selectors``) and reads each request's head (request line and
headers) as it trickles in; only a complete head goes to a worker thread. So:

- threads are fixed: ``QUICK`` for GET/HEAD/OPTIONS (/health, the page, /metrics never
  wait behind generations) and a pool sized from the slots for the rest;
- open connections are capped (``max_connections``); past the cap a new one gets an
  immediate 503 with Retry-After, and a head that waited ``QUEUE_WAIT`` seconds for a
  worker gets the same, never an unbounded pile;
- a head must arrive within ``header_timeout``, a body within ``body_timeout``, and an
  idle keep-alive connection is closed after ``idle_timeout``; a streamed answer is
  never cut while its client reads, but one that stops reading for ``send_timeout``
  is dropped and its slot freed;
- the listen backlog takes bursts (``BACKLOG``), and heads past ``MAX_HEAD`` bytes are
  a 431, as every refusal, in JSON.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass

BACKLOG = 1024  # the kernel caps it at net.core.somaxconn (4096 on current kernels)
MAX_LINE = 8 * 1024  # the request line
MAX_HEAD = 32 * 1024  # request line and headers together
SEND_BUFFER = 64 * 1024  # bytes the kernel holds for a client; more waits for it to read
QUICK = 4  # threads for GET, HEAD and OPTIONS
QUEUE_WAIT = 10.0  # seconds a complete request may wait for a worker before a 503
TICK = 0.1  # seconds between the front's checks of deadlines and shutdown
LINGER = 2.0  # seconds a refused connection is drained before it is closed
QUICK_METHODS = (b"GET", b"HEAD", b"OPTIONS")


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 15.0
    send_timeout: float = 60.0
    max_connections: int = 4096  # from_settings sizes it from the open-file limit
    workers: int = 16  # threads for requests other than GET/HEAD/OPTIONS

    @classmethod
    def from_settings(cls, settings, slots: int) -> Limits:
        cap = settings["max_connections"] or min(4096, _fd_room() - 64)
        return cls(settings["header_timeout"], settings["body_timeout"], settings["idle_timeout"],
                   settings["send_timeout"], max(cap, 16), max(8, 4 * slots))  # fmt: skip


def _fd_room() -> int:
    """The open-file limit, raised to its hard maximum: each connection is one file."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            want = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        return soft
    except (ImportError, ValueError, OSError):
        return 1024  # Windows: select() in Python handles 512 sockets; keep below it
        # (the selector there is select-based)


class Reader:
    """The handler's ``rfile``: bytes already read by the front first, then the socket,
    each read bounded by the body timeout. What a request leaves unread (a pipelined next
    request) goes back to the front with the connection."""

    def __init__(self, sock: socket.socket, data: bytes, timeout: float):
        self.sock, self.buf, self.timeout = sock, bytearray(data), timeout

    def _fill(self) -> bool:
        self.sock.settimeout(self.timeout)
        chunk = self.sock.recv(65536)  # socket.timeout (an OSError) when the body stalls
        self.buf += chunk
        return bool(chunk)

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buf and (limit < 0 or len(self.buf) < limit):
            if not self._fill():
                break
        end = self.buf.find(b"\n") + 1 or len(self.buf)
        if limit >= 0:
            end = min(end, limit)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buf) < n) and self._fill():
            pass
        n = len(self.buf) if n < 0 else min(n, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read1(self, n: int = -1) -> bytes:
        if not self.buf:
            self._fill()
        return self.read(min(n, len(self.buf)) if n >= 0 else -1)

    def close(self) -> None:
        pass


class Writer:
    """The handler's ``wfile``. The send timeout counts from the last byte the client took,
    not from the start of a write: a slow reader (one byte a second) is never cut, and one
    that stopped reading is dropped once it has taken nothing for that long."""

    def __init__(self, sock: socket.socket, timeout: float):
        self.sock, self.timeout = sock, timeout

    def write(self, data: bytes) -> int:
        self.sock.settimeout(self.timeout)
        view = memoryview(data)
        while view:
            view = view[self.sock.send(view) :]  # each send waits at most the timeout
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Conn:
    sock: socket.socket
    addr: tuple
    data: bytes = b""  # bytes read and not yet handled
    deadline: float = 0.0
    since: float = 0.0  # when its complete head was queued for a worker


def answer_now(sock: socket.socket, status: int, message: str, retry: bool = False) -> None:
    """A refusal sent straight from the front (503 past the caps, 408, 414, 431); the
    caller then lingers on the socket (``Server.refuse``), so the client reads it before
    the close, instead of a reset for the request bytes it sent and nobody read."""
    body = json.dumps({"error": {"message": message, "type": "server_error" if status >= 500 else
                                 "invalid_request_error", "param": None, "code": None}}).encode()  # fmt: skip
    reason = {503: "Service Unavailable", 408: "Request Timeout", 414: "URI Too Long",
              431: "Request Header Fields Too Large"}  # fmt: skip
    head = (f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n" + ("Retry-After: 1\r\n" if retry else "")
            + "\r\n")  # fmt: skip
    try:
        sock.setblocking(False)
        sock.send(head.encode() + body)  # best effort: a client that does not read loses it
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def oversized(data: bytes) -> tuple[int, str] | None:
    """A refusal for a request line or head past the limits, or None."""
    line = data.find(b"\n")
    if (line if line >= 0 else len(data)) > MAX_LINE:
        return 414, f"the request line is longer than {MAX_LINE // 1024} KiB"
    end = data.find(b"\r\n\r\n")
    if (end if end >= 0 else len(data)) > MAX_HEAD:
        return 431, f"the request line and headers are larger than {MAX_HEAD // 1024} KiB"
    return None


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data


def is_quick(data: bytes) -> bool:
    return data.split(b" ", 1)[0].lstrip() in QUICK_METHODS


def new_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share a port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # "::1" is one address
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class Workers:
    """A fixed pool of threads running ``handle(conn)`` for queued connections; one that
    waited longer than QUEUE_WAIT is refused with a 503 instead."""

    def __init__(self, n: int, handle, refuse, name: str):
        self.q: queue.Queue = queue.Queue()
        self.handle, self.refuse = handle, refuse
        self.threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def put(self, conn: Conn) -> None:
        conn.since = time.monotonic()
        self.q.put(conn)

    def stop(self) -> None:
        for _ in self.threads:
            self.q.put(None)

    def _run(self) -> None:
        while (conn := self.q.get()) is not None:
            if time.monotonic() - conn.since > QUEUE_WAIT:
                self.refuse(conn.sock, 503, "the server is busy; retry shortly", retry=True)
                continue
            self.handle(conn)
