"""A soak run: minutes of mixed load against a bundle's server, to show it stays flat.

    .venv/bin/python bench/soak.py --bundle ./smol --minutes 30

Clients loop over a mix: streamed and plain chat, completions, embeddings, streams the
client hangs up on, slow readers, malformed requests, and idle connections. Reported:
requests by outcome, latency percentiles per kind, and the server's RSS and thread count
sampled every few seconds. A healthy server answers everything, never with a 5xx, and its
RSS and threads stay flat. Not a test: it measures (bench/, like the speed rows).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

CHAT = {"messages": [{"role": "user", "content": "Tell me about the sea."}], "max_tokens": 24}


def start(bundle: str) -> tuple[subprocess.Popen, str]:
    cmd = [bundle, "--server", "--port", "0"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True
    )
    url = proc.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            return proc, url
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.1)
    raise SystemExit("the server never became ready")


def post(url: str, path: str, body: dict, timeout: float = 120) -> int:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def raw(port: int, data: bytes, read_slowly: bool = False, hang_up_after: int | None = None) -> int:
    """Send raw bytes; return the answer's status (0 when we hung up on purpose)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(data)
        got = b""
        while chunk := sock.recv(1 if read_slowly and len(got) < 400 else 65536):
            got += chunk
            if read_slowly and len(got) < 400:
                time.sleep(0.01)
            if hang_up_after is not None and len(got) >= hang_up_after:
                return 0
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else -1


def stream_request(body: dict, path: str = "/v1/chat/completions") -> bytes:
    data = json.dumps({**body, "stream": True}).encode()
    head = b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    return head % (path.encode(), len(data)) + data


def scenarios(url: str, port: int) -> dict:
    return {
        "chat": lambda: post(url, "/v1/chat/completions", CHAT),
        "chat stream": lambda: raw(port, stream_request(CHAT)),
        "completion": lambda: post(url, "/v1/completions", {"prompt": "The sea is", "max_tokens": 16}),
        "embedding": lambda: post(url, "/v1/embeddings", {"input": "the sea"}),
        "hang-up mid-stream": lambda: raw(
            port, stream_request({**CHAT, "max_tokens": 64}), hang_up_after=600
        ),
        "slow reader": lambda: raw(port, stream_request(CHAT), read_slowly=True),
        "malformed": lambda: raw(
            port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Length: 9\r\n\r\n{not json",
        ),  # fmt: skip
        "tokenize": lambda: post(url, "/tokenize", {"content": "hi"}),
    }


def idle_connections(port: int, n: int, stop: threading.Event) -> None:
    """Connections that open and say nothing, replaced as the server times them out."""
    while not stop.is_set():
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        stop.wait(5)
        for s in socks:
            s.close()


def sample(pid: int) -> dict:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True, help="a built bundle (SmolLM2 for the README's run)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--idle", type=int, default=200, help="idle connections held open")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    proc, url = start(args.bundle)
    port = int(url.rsplit(":", 1)[1])
    mix, rng = scenarios(url, port), random.Random(args.seed)
    outcomes, latency, lock = collections.Counter(), collections.defaultdict(list), threading.Lock()
    stop, samples = threading.Event(), []
    end = time.monotonic() + args.minutes * 60

    def client(seed: int) -> None:
        r = random.Random(seed)
        while time.monotonic() < end:
            name = r.choice(list(mix))
            t0 = time.monotonic()
            try:
                status = mix[name]()
                kind = "hung up (as meant)" if status == 0 else f"{status}"
            except OSError as e:
                kind = f"client error: {type(e).__name__}"
            with lock:
                outcomes[(name, kind)] += 1
                latency[name].append(time.monotonic() - t0)

    threading.Thread(target=idle_connections, args=(port, args.idle, stop), daemon=True).start()
    threads = [threading.Thread(target=client, args=(rng.random(),)) for _ in range(args.clients)]
    for t in threads:
        t.start()
    while time.monotonic() < end:
        samples.append((time.monotonic(), sample(proc.pid)))
        time.sleep(5)
    for t in threads:
        t.join()
    stop.set()
    samples.append((time.monotonic(), sample(proc.pid)))
    proc.terminate()
    proc.wait(timeout=30)
    report(args, outcomes, latency, samples)
    return 1 if any(k.startswith("5") or k.startswith("client") for _, k in outcomes) else 0


def report(args, outcomes, latency, samples) -> None:
    print(f"## Soak: {args.minutes:g} minutes, {args.clients} clients, {args.idle} idle connections\n")
    print("| request | outcome | count |\n| --- | --- | --- |")
    for (name, kind), n in sorted(outcomes.items()):
        print(f"| {name} | {kind} | {n} |")
    print("\n| request | p50 s | p95 s | p99 s | max s |\n| --- | --- | --- | --- | --- |")
    for name, xs in sorted(latency.items()):
        q = statistics.quantiles(xs, n=100) if len(xs) > 1 else xs * 99
        print(f"| {name} | {q[49]:.2f} | {q[94]:.2f} | {q[98]:.2f} | {max(xs):.2f} |")
    rss = [s["VmRSS"] / 1024 for _, s in samples]
    thr = [s["Threads"] for _, s in samples]
    first, last = samples[0][1], samples[-1][1]
    print(f"\nRSS MiB: first {first['VmRSS'] / 1024:.0f}, min {min(rss):.0f}, max {max(rss):.0f}, "
          f"last {last['VmRSS'] / 1024:.0f}; threads: first {first['Threads']}, min {min(thr)}, "
          f"max {max(thr)}, last {last['Threads']} ({len(samples)} samples, every 5 s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
