"""Row 8: what pooling machines costs. Generation tok/s of a model spread over this machine
and two RPC workers (real bundles, ``--rpc-worker`` on loopback), against the same bundle
alone; then with a delay added to every message between leader and workers, as a real
network would (a proxy in this process holds each chunk for half the round trip).

Every layer still runs on this machine's cores, so what the pooled figure loses is the
protocol's cost alone (ggml's RPC and our worker's pass-through): each token crosses every
machine boundary once, and the workers' replies (counted by each worker, ``-v``) are round
trips the leader waits for. Every process, the lone one included, runs one thread: three
processes on one machine would otherwise fight over its cores (ggml's threads spin while
they wait), which no real pool of machines has.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time

from harness import Bench, Model, log
from measure import Stat, run
from report import Row
from rows_speed import TIMINGS

DELAYS_MS = (0.5, 2.0)  # round trips: a wired LAN, and Wi-Fi
CLOSED = re.compile(r"closed: (\d+) replies, (\d+) bytes in, (\d+) bytes out")


class Worker:
    def __init__(self, bundle, threads: int):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([str(bundle), "--rpc-worker", "-v", "--port", str(self.port), "-t",
                                      str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        self.lines: list[str] = []
        first = self.proc.stderr.readline()
        while "RPC worker" not in first:
            if not first:
                raise RuntimeError("an RPC worker did not start")
            first = self.proc.stderr.readline()
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    def replies(self) -> int:
        """Replies sent since the last call (one leader's whole run)."""
        got = sum(int(m[1]) for line in self.lines if (m := CLOSED.search(line)))
        self.lines.clear()
        return got

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Delay:
    """A TCP proxy that holds each chunk ``one_way`` seconds, each direction on its own."""

    def __init__(self, target: int, one_way: float):
        self.target, self.one_way = target, one_way
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.server.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for s in (a, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a), daemon=True).start()

    def _pump(self, src, dst) -> None:
        try:
            while data := src.recv(1 << 20):
                time.sleep(self.one_way)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


def _generate(b: Bench, model: Model, extra: list[str]) -> tuple[list[str], float, int]:
    cmd = [str(model.bundle), "-p", "Once upon a time", "--raw", "-n", str(b.n_gen), "--temp", "0",
           "--timings", "-t", "1", "-c", str(b.ctx), *extra]  # fmt: skip
    m = TIMINGS.search(run(cmd).stderr)
    if not m:
        raise RuntimeError(f"no timings line from {model.bundle.name} -p --timings {' '.join(extra)}")
    return cmd, float(m.group(4)), int(m.group(3))


def pooled(b: Bench, model: Model) -> list[Row]:
    b.begin(f"row 8: generation over two RPC workers on loopback, {model.label}")
    workers = [Worker(model.bundle, 1), Worker(model.bundle, 1)]
    delays = {ms: [Delay(w.port, ms / 2000) for w in workers] for ms in DELAYS_MS}
    try:
        direct = ",".join(f"127.0.0.1:{w.port}" for w in workers)
        setups = {
            0.0: direct,
            **{ms: ",".join(f"127.0.0.1:{d.port}" for d in ds) for ms, ds in delays.items()},
        }
        alone: list[float] = []
        split: dict[float, list[float]] = {ms: [] for ms in setups}
        trips, cmds = [], []
        for i in b.turns():
            c0, local, _ = _generate(b, model, [])
            got = {}
            for ms, endpoints in setups.items():
                cmd, got[ms], n = _generate(b, model, ["--rpc", endpoints])
                if ms == 0.0:
                    replies = sum(w.replies() for w in workers)
                    cmds = [b.show(c0), b.show(cmd)]
                else:
                    for w in workers:
                        w.replies()
            if not b.keep(i):
                continue
            alone.append(local)
            for ms in setups:
                split[ms].append(got[ms])
            trips.append(replies / max(n, 1))
            log(f"  run {i}/{b.runs}: alone {local:.1f}, pooled {got[0.0]:.1f} t/s; "
                + ", ".join(f"+{ms:g} ms {got[ms]:.1f}" for ms in DELAYS_MS))  # fmt: skip
    finally:
        for ds in delays.values():
            for d in ds:
                d.close()
        for w in workers:
            w.stop()
    note = b.end()
    per_token = sorted(trips)[len(trips) // 2] if trips else 0
    what = (f"generation, {model.label}, spread over this machine and 2 RPC workers on loopback, one "
            "thread each (reference: the same bundle alone, one thread)")  # fmt: skip
    trips_note = f"about {per_token:.1f} worker replies (round trips, load included) per generated token"
    rows = [Row(8, what, "tok/s", Stat(split[0.0]), Stat(alone), commands=cmds, notes=[note, trips_note])]
    for ms in DELAYS_MS:
        rows.append(Row(8, f"generation, {model.label}, the same with {ms:g} ms added to each round trip "
                        "(a network)", "tok/s", Stat(split[ms]), Stat(alone)))  # fmt: skip
    return rows
