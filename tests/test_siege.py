"""The server under siege (loopback, bounded in count and time): bursts, 3,000 half-sent
requests, slow and stalled readers, oversized and malformed requests, pipelining. It must
stay answerable with fixed threads and flat memory, and refuse cleanly in JSON."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
import urllib.request

import pytest

from conftest import Served

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def many_files():
    """This test process opens thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def proc_status(s: Served) -> dict:
    out = {}
    for line in open(f"/proc/{s.proc.pid}/status"):
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


def get(url: str, path: str, timeout: float = 10) -> tuple[int, dict]:
    with urllib.request.urlopen(url + path, timeout=timeout) as r:
        return r.status, json.load(r)


def raw(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


@pytest.fixture(scope="module")
def server(bundle):
    s = Served(bundle, "--temp", "0", env={"LLAMABUNDLE_HEADER_TIMEOUT": "3", "LLAMABUNDLE_BODY_TIMEOUT": "2",
                                           "LLAMABUNDLE_IDLE_TIMEOUT": "2"})  # fmt: skip
    s.wait_ready()
    yield s
    s.stop()


def test_a_burst_of_200_health_checks_all_answer_within_half_a_second(server):
    go, times, errors = threading.Barrier(201), [], []

    def one():
        go.wait()
        t0 = time.monotonic()
        try:
            get(server.url, "/health")
            times.append(time.monotonic() - t0)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    go.wait()
    for t in threads:
        t.join()
    assert errors == [] and len(times) == 200
    assert max(times) < 0.5, sorted(times)[-5:]


def test_3000_half_sent_requests_hold_no_threads_and_are_timed_out(server):
    before = proc_status(server)
    socks = []
    for _ in range(3000):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.")  # and then nothing
        socks.append(sock)
    try:
        t0 = time.monotonic()
        assert get(server.url, "/health")[0] == 200
        assert time.monotonic() - t0 < 1.0
        body = json.dumps({"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 8})
        req = urllib.request.Request(server.url + "/v1/chat/completions", body.encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        reply = json.load(urllib.request.urlopen(req, timeout=60))
        assert reply["usage"]["completion_tokens"] > 0
        during = proc_status(server)
        assert during["Threads"] <= before["Threads"] + 2, (before, during)
        assert during["VmRSS"] - before["VmRSS"] < 60 * 1024, (before, during)  # KiB
        time.sleep(3.5)  # the header timeout (3 s here) runs out for all of them
        for sock in socks:
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data == b"" or b" 408 " in data.split(b"\r\n")[0], data[:200]
    finally:
        for sock in socks:
            sock.close()
    after = proc_status(server)
    assert after["Threads"] <= before["Threads"] + 2


MANY_HEADERS = b"".join(b"X-%d: 1\r\n" % i for i in range(120))


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),  # request line
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n", 431),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + MANY_HEADERS + b"\r\n", 431),
    (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"prompt\"", 408),
    (b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    (b"GET /health HTTP/9.9\r\n\r\n", 505),
])  # fmt: skip
def test_bad_requests_get_clean_json_refusals(server, request_bytes, status):
    out = raw(server.port, request_bytes)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode(), out[:300]
    assert b"application/json" in head and "message" in json.loads(body)["error"]


def test_pipelined_requests_on_one_connection_are_answered_in_order(server):
    body = json.dumps({"content": "hello"}).encode()
    post = b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    out = raw(server.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + post
              + b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")  # fmt: skip
    parts = out.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200"] * 3
    assert b'"status": "ok"' in parts[0] and b'"tokens"' in parts[1] and b'"object": "list"' in parts[2]


def test_an_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while b'"status"' not in data or not data.endswith(b"}"):
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the server after its idle timeout (2 s here)
        assert 1.5 < time.monotonic() - t0 < 6


def test_past_the_connection_cap_a_clean_503(bundle):
    s = Served(bundle, env={"LLAMABUNDLE_MAX_CONNECTIONS": "20"})
    try:
        s.wait_ready()
        held = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(20)]
        time.sleep(0.3)
        out = raw(s.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in out, out[:300]
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert get(s.url, "/health")[0] == 200  # room again
    finally:
        s.stop()


def _stream_request(prompt: str, n: int, n_probs: int = 0) -> bytes:
    body = json.dumps({"prompt": prompt, "n_predict": n, "ignore_eos": True, "stream": True,
                       "n_probs": n_probs}).encode()  # fmt: skip
    return b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_a_slow_reader_is_not_cut(server):
    """About 700 KB of events (20 log-probabilities per token) against a 64 KiB send buffer:
    the server waits on this client, which reads a byte a second for 6 seconds."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(_stream_request("Once upon a time", 400, n_probs=20))
        data = b""
        for _ in range(6):
            data += sock.recv(1)
            time.sleep(1)
        sock.settimeout(30)
        while chunk := sock.recv(65536):
            data += chunk
    events = [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 400


def test_a_reader_that_stops_is_dropped_and_its_slot_freed(chat_bundle):
    s = Served(chat_bundle, env={"LLAMABUNDLE_SEND_TIMEOUT": "2"})
    try:
        s.wait_ready()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", s.port))
            sock.sendall(_stream_request("Tell me a long story.", 4000))  # a minute or more of work
            deadline = time.monotonic() + 240  # the send buffer fills in seconds, longer on a busy machine
            while not get(s.url, "/health")[1]["busy"] and time.monotonic() < deadline:
                time.sleep(0.1)  # the generation starts
            while get(s.url, "/health")[1]["busy"] and time.monotonic() < deadline:
                time.sleep(0.5)  # never read: the send buffer fills, then the send timeout runs
            assert not get(s.url, "/health")[1]["busy"], "the stalled stream still holds its slot"
            sock.settimeout(10)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert b'"stop": true' not in data  # cut, not finished
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(s.url + "/metrics", timeout=10).read().decode()
        done = {x.name: x.value for f in text_string_to_metric_families(text) for x in f.samples}
        assert done["llamacpp:tokens_predicted_total"] < 4000  # the generation was cancelled
    finally:
        s.stop()
