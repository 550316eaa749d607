"""The engine's slots, and which one a new request goes to.

A slot serves one request at a time in its own llama.cpp sequence and keeps the
tokens it decoded (``cached``), so a later request that shares a prefix with
them (the next turn of a chat) only decodes what is new. Pure Python: the
scheduling rules are unit-tested without llama.cpp.
"""

from __future__ import annotations

import codecs
import time

from .stops import StopStrings

IDLE, PROMPT, GEN = "idle", "prompt", "generating"


class Slot:
    def __init__(self, seq: int):
        self.seq = seq  # the llama.cpp sequence id this slot decodes into
        self.state = IDLE
        self.cached: list[int] = []  # the tokens of this sequence in the KV cache, in order
        self.job = None
        self.sampler = None
        self.last_used = 0  # the engine's clock when the slot last took or finished a job

    def take(self, job, keep: int, clock: int, sampler) -> None:
        """Start ``job``; the first ``keep`` prompt tokens are already in the cache."""
        self.job, self.state, self.last_used, self.sampler = job, PROMPT, clock, sampler
        self.pending = job.tokens[keep:]  # prompt tokens still to decode (at least one)
        self.done = 0  # how many of them are decoded
        self.last = -1  # the token sampled last, decoded at the next step
        self.n_gen = 0
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span tokens
        self.stops = StopStrings(job.stop)
        self.text: list[str] = []  # what a job that does not stream has generated so far
        self.probs: list[dict] = []  # log-probabilities of tokens whose text is not out yet
        self.all_probs: list[dict] = []  # a job that does not stream: all of them
        self.t0 = self.t1 = time.perf_counter()


def pick(slots: list[Slot], tokens: list[int]) -> tuple[Slot | None, int]:
    """The idle slot whose cache shares the longest prefix with ``tokens`` (ties: the least
    recently used), and how many tokens it can keep. At least one prompt token is always
    left to decode, for fresh logits. (None, 0) when every slot is busy."""
    best, keep = None, -1
    for s in sorted((s for s in slots if s.state == IDLE), key=lambda s: s.last_used):
        n = common_prefix(s.cached, tokens, len(tokens) - 1)
        if n > keep:
            best, keep = s, n
    return best, max(keep, 0)


def common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = max(0, min(len(a), len(b), limit))
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i
