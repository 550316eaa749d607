"""The server's front (runtime/server/front.py) without a model: limits, request heads,
the reader that serves pipelined bytes first, and the writer's send timeout (fast)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from runtime.server import front


def test_oversized_request_lines_and_heads_are_refused():
    assert front.oversized(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert front.oversized(b"GET /" + b"a" * 9000)[0] == 414  # even before the line ends
    assert front.oversized(b"GET / HTTP/1.1\r\nX: " + b"b" * 40_000)[0] == 431
    assert front.oversized(b"GET / HTTP/1.1\r\n\r\n" + b"body" * 20_000) is None  # the body is not the head


def test_complete_heads_and_quick_methods():
    assert front.head_complete(b"GET / HTTP/1.1\r\n\r\n") and front.head_complete(b"GET / HTTP/1.0\n\n")
    assert not front.head_complete(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert front.is_quick(b"GET /health HTTP/1.1") and front.is_quick(b"OPTIONS / HTTP/1.1")
    assert not front.is_quick(b"POST /v1/chat/completions HTTP/1.1")


def test_the_reader_serves_bytes_already_read_then_the_socket():
    a, b = socket.socketpair()
    with a, b:
        r = front.Reader(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST", timeout=2)
        assert r.readline(65537) == b"GET / HTTP/1.1\r\n"
        assert r.readline(65537) == b"Host: x\r\n" and r.readline(65537) == b"\r\n"
        b.sendall(b" /next HTTP/1.1\r\n")
        assert r.readline(65537) == b"POST /next HTTP/1.1\r\n"
        b.sendall(b"0123456789")
        assert r.read(4) == b"0123" and bytes(r.buf) == b"456789"  # what is left goes back to the front


def test_a_stalled_body_times_out():
    a, b = socket.socketpair()
    with a, b:
        r = front.Reader(a, b"", timeout=0.2)
        b.sendall(b"abc")
        with pytest.raises(TimeoutError):
            r.read(10)


def test_the_writer_drops_a_client_that_takes_nothing():
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        w = front.Writer(a, timeout=0.3)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            for _ in range(10_000):
                w.write(b"x" * 1024)  # b never reads
        assert time.monotonic() - t0 < 5


def test_the_writer_waits_for_a_slow_reader():
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        got = []

        def read_slowly():
            while len(got) < 200_000:
                chunk = b.recv(8192)
                if not chunk:
                    return
                got.extend(chunk)
                time.sleep(0.01)

        t = threading.Thread(target=read_slowly)
        t.start()
        front.Writer(a, timeout=0.5).write(b"y" * 200_000)  # longer in total than the timeout
        t.join(timeout=30)
        assert len(got) == 200_000


def test_limits_come_from_the_settings_and_the_slots():
    settings = {"header_timeout": 5.0, "body_timeout": 6.0, "idle_timeout": 7.0, "send_timeout": 8.0,
                "max_connections": 0}  # fmt: skip
    lim = front.Limits.from_settings(settings, slots=4)
    assert (lim.header_timeout, lim.body_timeout, lim.idle_timeout, lim.send_timeout) == (5, 6, 7, 8)
    assert 16 <= lim.max_connections <= 4096 and lim.workers == 16
    assert front.Limits.from_settings({**settings, "max_connections": 50}, slots=1).max_connections == 50
