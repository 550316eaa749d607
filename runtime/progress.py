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
