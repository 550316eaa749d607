"""How one command is measured: wall time, exec to first stdout byte, peak RSS of
its whole process tree. Plus the summary of repeated samples."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Stat:
    """Samples of one figure (the warm-up run is never among them)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)


def wall(cmd: list[str], **kw) -> float:
    """Seconds a command takes to run to its end (it must succeed)."""
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dt


def run(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def first_byte(cmd: list[str]) -> tuple[float, bytes]:
    """Seconds from exec to the first byte on stdout, and everything it printed there
    (so the caller can check that the first byte was generated text)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
    first = p.stdout.read(1)
    dt = time.perf_counter() - t
    rest = p.stdout.read()
    if p.wait() != 0 or not first:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}) or printed nothing")
    return dt, first + rest


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class TreeRun:
    peak_rss: int  # bytes: the sum over every process of the tree of its own peak RSS
    processes: int
    stdout: str
    stderr: str
    seconds: float


def tree_peak_rss(cmd: list[str], interval: float = 0.01) -> TreeRun:
    """Run ``cmd`` to its end; every ``interval`` s, walk its process tree
    (/proc/PID/task/*/children) and read each process's VmHWM (its peak RSS so far,
    which only grows). The result sums each process's last reading. A root that
    never had a child also gets wait4()'s ru_maxrss (its own peak, even if it ended
    between two readings); with children ru_maxrss would be theirs, so it is not used."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peaks: dict[int, int] = {}
    done = threading.Event()

    def poll():
        while not done.is_set():
            stack = [p.pid]
            while stack:
                pid = stack.pop()
                kib = _hwm_kib(pid)
                if kib is not None:
                    peaks[pid] = max(peaks.get(pid, 0), kib)
                stack += _children(pid)
            done.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read())) for s, b in
               ((p.stdout, out), (p.stderr, err))]  # fmt: skip
    for r in readers:
        r.start()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    for r in readers:
        r.join()
    dt = time.perf_counter() - t
    stdout, stderr = out[0].decode(errors="replace"), err[0].decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {stderr[-2000:]}")
    if len(peaks) <= 1:
        peaks[p.pid] = max(peaks.get(p.pid, 0), usage.ru_maxrss)  # ru_maxrss is in KiB on Linux
    return TreeRun(sum(peaks.values()) * 1024, len(peaks), stdout, stderr, dt)


def rm(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            path.unlink()
