"""The server object: one listening socket, the front thread that watches every open
connection and reads request heads (``front.py`` says why), and the worker pools that
run the HTTP handler on a complete request, then hand a kept-alive connection back."""

from __future__ import annotations

import selectors
import socket
import sys
import threading
import time

from . import front
from .front import Conn, Limits, Reader, Workers, Writer, answer_now


class Server:
    def __init__(self, addr: tuple, app, handler_class, limits: Limits):
        self.app, self.handler_class, self.limits = app, handler_class, limits
        self.socket = front.new_listener(*addr)
        self.server_address = self.socket.getsockname()
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.socket, selectors.EVENT_READ, None)
        self.conns: dict[socket.socket, Conn] = {}  # waiting for (the rest of) a head
        self.busy = 0  # connections a worker holds
        self.lock = threading.Lock()
        self.back: list[Conn] = []  # kept-alive connections handed back by workers
        self.stopping = threading.Event()
        self.front_thread = None
        self.stopped = threading.Event()
        self.lingering: dict[socket.socket, float] = {}  # refused: drained until closed or timed out
        self.to_linger: list[socket.socket] = []  # refused by a worker thread
        self.quick = Workers(front.QUICK, self._handle, self.refuse, "http-quick")
        self.slow = Workers(limits.workers, self._handle, self.refuse, "http")

    # -- the front thread ------------------------------------------------------------
    def serve_forever(self, poll_interval: float = front.TICK) -> None:
        self.front_thread = threading.current_thread()
        try:
            while not self.stopping.is_set():
                try:
                    self._turn(poll_interval)
                except Exception as e:  # a bug of ours must not stop the server answering
                    print(f"error: the HTTP front: {type(e).__name__}: {e}", file=sys.stderr)
                    time.sleep(poll_interval)
        finally:
            self.stopped.set()

    def _turn(self, poll_interval: float) -> None:
        for key, _ in self.sel.select(timeout=poll_interval):
            if key.fileobj is self.socket:
                self._accept()
            elif key.fileobj in self.lingering:
                self._drain(key.fileobj)
            else:
                self._read(self.conns.get(key.fileobj))
        self._take_back()
        self._expire()

    def refuse(self, sock: socket.socket, status: int, message: str, retry: bool = False) -> None:
        """Answer ``status`` and close, reading what the client still sends meanwhile."""
        answer_now(sock, status, message, retry)
        if threading.current_thread() is self.front_thread:
            self._linger(sock)
        else:
            with self.lock:
                self.to_linger.append(sock)

    def _linger(self, sock: socket.socket) -> None:
        self.lingering[sock] = time.monotonic() + front.LINGER
        try:
            self.sel.register(sock, selectors.EVENT_READ, None)
        except (KeyError, ValueError, OSError):
            self.lingering.pop(sock, None)
            front.close(sock)

    def _drain(self, sock: socket.socket) -> None:
        try:
            if sock.recv(65536):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self.lingering.pop(sock, None)
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        front.close(sock)

    def shutdown(self) -> None:
        self.stopping.set()
        self.stopped.wait()

    def server_close(self) -> None:
        self.quick.stop()
        self.slow.stop()
        for sock in [*self.conns, *self.lingering]:
            front.close(sock)
        self.conns.clear()
        self.sel.close()
        front.close(self.socket)

    def open_connections(self) -> int:
        with self.lock:
            return len(self.conns) + self.busy + len(self.back) + len(self.lingering)

    def _accept(self) -> None:
        for _ in range(256):  # a burst: take what is there, then look at the others
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, or the client left: try later
                return
            if self.open_connections() >= self.limits.max_connections:
                self.refuse(sock, 503, "too many open connections; retry shortly", retry=True)
                continue
            # A fixed send buffer (no autotuning to megabytes): the kernel memory a connection
            # holds is bounded, and a client that stops reading is noticed after 64 KiB.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, front.SEND_BUFFER)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each event goes out at once
            sock.setblocking(False)
            self._watch(Conn(sock, addr, b"", time.monotonic() + self.limits.header_timeout))

    def _watch(self, conn: Conn) -> None:
        if front.oversized(conn.data):
            return self.refuse(conn.sock, *front.oversized(conn.data))
        if front.head_complete(conn.data):  # a pipelined request already read
            return self._dispatch(conn)
        with self.lock:
            self.conns[conn.sock] = conn
        self.sel.register(conn.sock, selectors.EVENT_READ, None)

    def _read(self, conn: Conn | None) -> None:
        if conn is None:
            return
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self._drop(conn)
        if not conn.data:  # a kept-alive connection's next request starts: the header clock runs
            conn.deadline = time.monotonic() + self.limits.header_timeout
        conn.data += chunk
        refusal = front.oversized(conn.data)
        if refusal or front.head_complete(conn.data):
            self._unwatch(conn)
            if refusal:
                self.refuse(conn.sock, *refusal)
            else:
                self._dispatch(conn)

    def _dispatch(self, conn: Conn) -> None:
        with self.lock:
            self.busy += 1
        (self.quick if front.is_quick(conn.data) else self.slow).put(conn)

    def _unwatch(self, conn: Conn) -> None:
        with self.lock:
            self.conns.pop(conn.sock, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, conn: Conn) -> None:
        self._unwatch(conn)
        front.close(conn.sock)

    def _expire(self) -> None:
        now = time.monotonic()
        for sock in [s for s, t in self.lingering.items() if t < now]:
            self._end_linger(sock)
        for conn in [c for c in list(self.conns.values()) if c.deadline < now]:
            self._unwatch(conn)
            if conn.data:  # a head that never finished (slowloris): say so, then close
                self.refuse(conn.sock, 408, "the request headers did not arrive in time")
            else:  # an idle kept-alive connection: close quietly
                front.close(conn.sock)

    def _take_back(self) -> None:
        with self.lock:
            back, self.back = self.back, []
            refused, self.to_linger = self.to_linger, []
        for sock in refused:
            self._linger(sock)
        for conn in back:
            self._watch(conn)

    # -- worker threads -----------------------------------------------------------------
    def _handle(self, conn: Conn) -> None:
        keep = False
        try:
            conn.sock.setblocking(True)
            reader = Reader(conn.sock, conn.data, self.limits.body_timeout)
            handler = self.handler_class(
                conn, conn.addr, self, reader, Writer(conn.sock, self.limits.send_timeout)
            )
            keep = not handler.close_connection and not self.stopping.is_set()
            conn.data = bytes(reader.buf)
        except OSError:
            keep = False
        except Exception as e:  # a bug of ours: this connection goes, the server stays
            print(f"error: the HTTP handler failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            with self.lock:
                self.busy -= 1
        if not keep:
            front.close(conn.sock)
            return
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.limits.idle_timeout
        with self.lock:
            self.back.append(conn)
