"""Our server and llama-server, driven by one HTTP client (urllib, one connection
per request, non-streaming /v1/completions and /v1/chat/completions)."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ours_cmd(bundle: Path, port: int, threads: int, ctx: int, parallel: int | None = None) -> list[str]:
    cmd = [str(bundle), "--server", "--port", str(port), "-t", str(threads), "-c", str(ctx)]
    return cmd + (["--parallel", str(parallel)] if parallel else [])


def ref_cmd(exe: Path, model: Path, port: int, threads: int, ctx: int, parallel: int) -> list[str]:
    return [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
            "-c", str(ctx), "-np", str(parallel), "--kv-unified"]  # fmt: skip


class Server:
    """A server process; ``ready`` is the seconds from exec to the first /health 200."""

    def __init__(self, cmd: list[str], port: int, log: Path, timeout: float = 300):
        self.cmd, self.url = cmd, f"http://127.0.0.1:{port}"
        self._log = open(log, "ab")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{' '.join(cmd)} exited ({self.proc.returncode}); see {log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.HTTPError, OSError):
                pass
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{' '.join(cmd)}: no /health 200 after {timeout} s; see {log}")
            time.sleep(0.01)
        self.ready = time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@dataclass
class Reply:
    prompt_tokens: int  # usage.prompt_tokens
    completion_tokens: int  # usage.completion_tokens
    timings: dict | None  # the server's own `timings`, when it sends one
    seconds: float  # client wall clock, request sent to whole response read
    text: str = ""  # the first choice's text (or message content)


def post(url: str, path: str, body: dict) -> Reply:
    """One non-streaming request to /v1/completions or /v1/chat/completions. An error
    answer raises, with the server's own message."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            data = json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"POST {path}: {e.code} {e.read().decode(errors='replace')[:500]}") from None
    dt = time.perf_counter() - t
    usage, choice = data["usage"], data["choices"][0]
    text = (choice["message"].get("content") or "") if "message" in choice else choice.get("text", "")
    return Reply(usage["prompt_tokens"], usage["completion_tokens"], data.get("timings"), dt, text)


def complete(url: str, prompt: str, n: int) -> Reply:
    """Greedy completion of ``n`` tokens. ``cache_prompt: false`` asks llama-server to
    process the whole prompt; ours ignores the key (its prompts are new to it anyway)."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "cache_prompt": False}
    return post(url, "/v1/completions", body)


def concurrent(url: str, prompts: list[str], n: int) -> tuple[list[Reply], float]:
    """Send every prompt at once, one client thread each (released together by a
    barrier); the replies and the wall time from the first request sent to the last
    reply read."""
    replies: list = [None] * len(prompts)
    starts, ends = [0.0] * len(prompts), [0.0] * len(prompts)
    gate = threading.Barrier(len(prompts))

    def client(i: int) -> None:
        gate.wait()
        starts[i] = time.perf_counter()
        try:
            replies[i] = complete(url, prompts[i], n)
        except Exception as e:  # noqa: BLE001 - reported below
            replies[i] = e
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for r in replies:
        if isinstance(r, Exception):
            raise RuntimeError(f"a concurrent request failed: {r}")
    return replies, max(ends) - min(starts)
