"""Stop strings over streamed text.

Generated text arrives piece by piece, and a stop string may span pieces, so a
tail that could be the start of one is held back until it is clear it is not.
Neither the stop string nor what follows it is ever shown.
"""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.held = ""
        self.hit = False  # a stop string was found: the text ends here
        self.word: str | None = None  # the one found (the earliest in the text)

    def feed(self, piece: str) -> str:
        """Take a new piece; return the text that is now safe to show."""
        if self.hit:
            return ""
        if not self.stops:
            return piece
        held = self.held + piece
        hits = [(held.find(s), s) for s in self.stops if s in held]
        if hits:
            at, self.word = min(hits)
            self.hit, self.held = True, ""
            return held[:at]
        keep = self._partial(held)
        self.held = held[len(held) - keep :]
        return held[: len(held) - keep]

    def _partial(self, text: str) -> int:
        """The longest tail of ``text`` that could still grow into a stop string: only that
        is held back, so text streams as it comes unless it may be the start of one."""
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        """The end of the text: whatever was held back is shown after all."""
        held, self.held = self.held, ""
        return held
