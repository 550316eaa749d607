"""A progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = self.last = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and self.done:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def __call__(self, n: int) -> None:
        self.done += n
        if self.enabled:
            self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 0.1:
            return
        self.last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        rate = self.done / max(now - self.start, 1e-6) / 2**20
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {frac:6.1%} {self.done / 2**20:,.0f}/{self.total / 2**20:,.0f} MiB "
            f"{rate:,.0f} MiB/s"
        )
        self.stream.flush()


class Waiting:
    """A word on stderr for work that is usually quick but may take long (a GPU driver
    compiling its shaders on first use): nothing if it ends within ``after`` seconds, else
    a count of seconds on a terminal, or one line where stderr is a log."""

    def __init__(self, label: str, after: float = 2.0, stream=None):
        import threading

        self.label, self.after = label, after
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.shown = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Waiting:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.shown:
            back = "\r" if self.stream.isatty() else ""
            self.stream.write(f"{back}{self.label}: done in {time.monotonic() - self.start:.0f} s\n")
            self.stream.flush()

    def _run(self) -> None:
        if self._stop.wait(self.after):
            return
        self.shown = True
        tty = self.stream.isatty()
        self.stream.write(f"{self.label}..." + ("" if tty else "\n"))
        self.stream.flush()
        while tty and not self._stop.wait(1.0):
            self.stream.write(f"\r{self.label}... {time.monotonic() - self.start:.0f} s")
            self.stream.flush()
