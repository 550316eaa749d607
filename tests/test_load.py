"""A bounded load test on loopback: 8 clients, 200 requests in all, mixing streaming,
non-streaming and clients that hang up mid-stream. No 5xx, no mixed answers, and
the server's memory after the run stays within a stated bound of before."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
from pathlib import Path

import pytest

from conftest import Served

pytestmark = pytest.mark.e2e

CLIENTS, REQUESTS, MAX_TOKENS = 8, 200, 24
RSS_BOUND = 64 << 20  # bytes the server may grow by over the run
PROMPTS = ["Once upon a time", "One day", "The cat", "Lily and Tom", "The big dog", "A little bird"]


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def _server_pids(served: Served) -> list[int]:
    kids = Path(f"/proc/{served.proc.pid}/task/{served.proc.pid}/children").read_text().split()
    return [served.proc.pid, *map(int, kids)]


def _request(port: int, prompt: str, mode: str) -> tuple[int, str]:
    body = json.dumps({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                       "stream": mode != "plain"})  # fmt: skip
    if mode == "hangup":  # send, read the first event, and go away
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}"
                      f"\r\nContent-Type: application/json\r\n\r\n{body}".encode())  # fmt: skip
            got = b""
            while b"data:" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        return int(got.split(b" ", 2)[1]), ""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read().decode()
    conn.close()
    if resp.status != 200:
        return resp.status, raw
    if mode == "plain":
        return 200, json.loads(raw)["choices"][0]["text"]
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in raw.splitlines()
                   if line.startswith("data: {") and json.loads(line[6:])["choices"])  # fmt: skip
    return 200, text


def test_eight_clients_two_hundred_requests(bundle):
    s = Served(bundle, "--temp", "0")
    try:
        s.wait_ready()
        expected = {p: _request(s.port, p, "plain")[1] for p in PROMPTS}
        assert len(set(expected.values())) == len(PROMPTS)
        before = _rss(_server_pids(s))
        rng = random.Random(7)
        jobs = [(rng.choice(PROMPTS), rng.choice(["plain", "stream", "stream", "hangup"]))
                for _ in range(REQUESTS)]  # fmt: skip
        results, lock = [], threading.Lock()

        def client(mine):
            for prompt, mode in mine:
                status, text = _request(s.port, prompt, mode)
                with lock:
                    results.append((prompt, mode, status, text))

        threads = [threading.Thread(target=client, args=(jobs[i::CLIENTS],)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert len(results) == REQUESTS
        statuses = [r[2] for r in results]
        assert all(code == 200 for code in statuses), sorted(set(statuses))  # no 5xx, nor anything else
        for prompt, mode, _, text in results:
            if mode != "hangup":
                assert text == expected[prompt], (prompt, mode, text)  # each got its own answer
        after = _rss(_server_pids(s))
        print(f"\nload: {REQUESTS} requests, {statuses.count(200)} x 200, "
              f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")  # fmt: skip
        assert after - before < RSS_BOUND, (before, after)
    finally:
        assert s.stop() == 0
