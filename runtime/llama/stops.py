"""Stop strings over streamed text.

Generated text arrives piece by piece, and a stop string may span pieces, so the
last few characters (as many as the longest stop string) are held back until it
is clear they do not start one. Neither the stop string nor what follows it is
ever shown.
"""

from __future__ import annotations


class StopStrings:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.held = ""
        self.hit = False  # a stop string was found: the text ends here

    def feed(self, piece: str) -> str:
        """Take a new piece; return the text that is now safe to show."""
        if self.hit:
            return ""
        if not self.stops:
            return piece
        held = self.held + piece
        hits = [held.find(s) for s in self.stops if s in held]
        if hits:
            self.hit, self.held = True, ""
            return held[: min(hits)]
        cut = len(held) - self.longest
        if cut > 0:
            self.held = held[cut:]
            return held[:cut]
        self.held = held
        return ""

    def flush(self) -> str:
        """The end of the text: whatever was held back is shown after all."""
        held, self.held = self.held, ""
        return held
