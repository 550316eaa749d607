"""Server figures: exec to /health 200, single-client tokens/s over HTTP against
`-p` in the same run, and aggregate tokens/s with 4 concurrent clients.

    python bench/server.py [--model PATH ...] [--runs 5] [-n 128]

Each model is fused with the cached stub into a temporary bundle. Tokens/s are
completion tokens divided by the client's wall time for the request (so they
include HTTP and JSON costs), medians over --runs runs.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from common import LLAMABUNDLE, PROMPT, cached_stub, parse_args

HERE = Path(__file__).resolve().parent


def start(bundle: Path):
    proc = subprocess.Popen([str(bundle), "--server", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    t0 = time.perf_counter()
    url = proc.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return proc, url, time.perf_counter() - t0
        except urllib.error.HTTPError:
            time.sleep(0.005)
        except OSError:
            time.sleep(0.005)


def complete(url: str, n: int, prompt: str = PROMPT) -> tuple[int, float]:
    body = json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0}).encode()
    t = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=body), timeout=600) as r:
        data = json.load(r)
    return data["usage"]["completion_tokens"], time.perf_counter() - t


def p_speed(bundle: Path, n: int) -> float:
    err = subprocess.run([str(bundle), "-p", PROMPT, "-n", str(n), "--temp", "0", "--timings"],
                         capture_output=True, text=True, check=True).stderr  # fmt: skip
    return float(re.search(r"generated \d+ tokens in [\d.]+ ms \(([\d.]+) t/s\)", err).group(1))


def concurrent(url: str, n: int, clients: int) -> float:
    results = []
    prompts = [f"{PROMPT} {i}" for i in range(clients)]
    t = time.perf_counter()
    threads = [threading.Thread(target=lambda p=p: results.append(complete(url, n, p)[0])) for p in prompts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(results) / (time.perf_counter() - t)


def main() -> None:
    args = parse_args(__doc__)
    models = args.model
    stub = str(cached_stub())
    print("| model | exec to /health 200 | -p t/s | HTTP t/s (1 client) | ratio | 4 clients, aggregate t/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            bundle = Path(tmp) / model.stem
            subprocess.run([str(LLAMABUNDLE), "build", str(model), "-o", str(bundle), "--runtime", stub],
                           check=True, capture_output=True)  # fmt: skip
            health, http, agg = [], [], []
            p_speed(bundle, args.n)
            ps = statistics.median(p_speed(bundle, args.n) for _ in range(args.runs))
            for i in range(args.runs + 1):
                proc, url, dt = start(bundle)
                try:
                    complete(url, 8)  # warm up
                    n, secs = complete(url, args.n)
                    if i:  # the first start warms the page cache
                        health.append(dt)
                        http.append(n / secs)
                        agg.append(concurrent(url, args.n, 4))
                finally:
                    proc.terminate()
                    proc.wait()
            h, s, a = (statistics.median(x) for x in (health, http, agg))
            print(f"| {model.name} | {h:.2f} s | {ps:.1f} | {s:.1f} | {s / ps:.2f}x | {a:.1f} |")


if __name__ == "__main__":
    main()
