"""Continuous batching: several requests decoded together in one llama.cpp context.

Like llama-server's parallel slots. The context has ``n_slots`` sequences over one
unified KV cache of ``n_ctx`` cells. Each slot serves one request at a time and
keeps the tokens it decoded, so a later request that shares a prefix with them
(the next turn of a chat) only decodes what is new.

Each ``step()`` is one ``llama_decode``: every generating slot adds the token it
sampled last, and prompts being processed fill the rest of the batch in chunks,
so a new request starts between two steps without stalling the running ones.
Each slot then samples from its own row of logits with its own sampler chain.
"""

from __future__ import annotations

import codecs
import time

from .engine import make_sampler
from .errors import ModelError, UsageError
from .stops import StopStrings

IDLE, PROMPT, GEN = "idle", "prompt", "generating"
NO_KV_ROOM = 1  # llama_decode: no room in the KV cache for the batch (the cache is left as it was)


class Slot:
    def __init__(self, seq: int):
        self.seq = seq  # the llama.cpp sequence id this slot decodes into
        self.state = IDLE
        self.cached: list[int] = []  # the tokens of this sequence in the KV cache, in order
        self.job = None
        self.last_used = 0  # the engine's clock when the slot last took or finished a job

    def take(self, job, keep: int, clock: int, sampler) -> None:
        self.job, self.state, self.last_used, self.sampler = job, PROMPT, clock, sampler
        self.pending = job.tokens[keep:]  # prompt tokens still to decode (at least one)
        self.done = 0  # how many of them are decoded
        self.last = -1  # the token sampled last, decoded at the next step
        self.n_gen = 0
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = StopStrings(job.stop)
        self.text: list[str] = []  # what a job that does not stream has generated so far
        self.t0 = self.t1 = time.perf_counter()


class BatchEngine:
    """One llama.cpp context decoding for up to ``n_slots`` requests at once.

    Not thread-safe: one thread (the worker's) calls ``add``, ``step`` and ``close``.
    ``model``, ``n_ctx``, ``n_threads`` and ``C`` mirror ``engine.Session``'s."""

    def __init__(self, model, *, n_ctx: int, n_threads: int, n_batch: int = 512, n_slots: int = 4):
        C = model.C
        self.C, self.model, self.n_threads, self.n_batch = C, model, n_threads, n_batch
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        params.kv_unified = True  # one cache of n_ctx cells that all slots share
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self.ptr = C.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ModelError(f"llama.cpp could not create a context of {n_ctx} tokens for {n_slots} "
                             "slots; try a smaller --ctx-size")  # fmt: skip
        self.n_ctx = C.llama_n_ctx(self.ptr)
        self.mem = C.llama_get_memory(self.ptr)
        cap = max(n_batch, n_slots)
        self.batch = C.llama_batch_init(cap, 0, 1)
        self._seq = [self.batch.seq_id[i] for i in range(cap)]  # each token's one sequence id
        for i in range(cap):
            self.batch.n_seq_id[i] = 1
        self.slots = [Slot(i) for i in range(n_slots)]
        self.clock = 0
        self.generated_tokens = 0  # all tokens generated so far (a counter, like llama-server's metrics)
        self._pieces: dict[int, bytes | None] = {}  # token -> its text, None for end of generation

    def close(self) -> None:
        if getattr(self, "ptr", None):
            for slot in self.slots:
                if slot.state != IDLE:
                    self._finish(slot, "cancelled")
            self.C.llama_batch_free(self.batch)
            self.C.llama_free(self.ptr)
            self.ptr = None

    @property
    def active(self) -> int:
        return sum(s.state != IDLE for s in self.slots)

    def has_idle(self) -> bool:
        return any(s.state == IDLE for s in self.slots)

    # -- requests ----------------------------------------------------------------
    def add(self, job) -> bool:
        """Start ``job`` on the idle slot whose cache shares the longest prefix with its
        prompt (ties: the least recently used); False when every slot is busy."""
        tokens = job.tokens
        idle = [s for s in self.slots if s.state == IDLE]
        if not idle:
            return False
        if not tokens or len(tokens) >= self.n_ctx:
            msg = ("the prompt is empty" if not tokens else f"the prompt is {len(tokens)} tokens but the "
                   f"context holds {self.n_ctx}; shorten it or raise --ctx-size")  # fmt: skip
            job.events.put(("error", UsageError(msg)))
            return True
        best, keep = None, -1
        for s in sorted(idle, key=lambda s: s.last_used):
            n = _common_prefix(s.cached, tokens, len(tokens) - 1)  # always decode one token: fresh logits
            if n > keep:
                best, keep = s, n
        C = self.C
        if keep and C.llama_memory_seq_pos_min(self.mem, best.seq) > 0:
            keep = 0  # the start of the sequence left the cache (sliding-window attention)
        if not C.llama_memory_seq_rm(self.mem, best.seq, keep, -1):
            keep = 0  # a cache that cannot drop a tail (recurrent models): start over
            C.llama_memory_seq_rm(self.mem, best.seq, -1, -1)
        del best.cached[keep:]
        self.clock += 1
        best.take(job, keep, self.clock, make_sampler(C, self.model.n_vocab, job.sampling))
        job.stats.prompt_tokens, job.stats.cached_tokens = len(tokens), keep
        if job.max_tokens == 0:
            self._finish(best, "length")
        return True

    def fail_all(self, error: Exception) -> None:
        """Give every running job ``error`` and forget what their slots cached."""
        for slot in self.slots:
            if slot.state != IDLE:
                self._finish(slot, "error", error)
                self._forget(slot)

    # -- one step ----------------------------------------------------------------
    def step(self) -> bool:
        """Decode one batch for the active slots and sample; False when none is active."""
        for slot in self.slots:
            if slot.state != IDLE and slot.job.cancelled.is_set():
                self._finish(slot, "cancelled")  # the client left: free the slot at once
        while True:
            rows = self._fill()
            if not rows:
                return False
            rc = self.C.llama_decode(self.ptr, self.batch)
            if rc == 0:
                break
            if rc == NO_KV_ROOM and self._make_room():
                continue
            error = ModelError(f"llama.cpp failed to evaluate the batch (llama_decode={rc})")
            for slot, _, _ in rows:  # whatever part reached the KV cache goes
                self.C.llama_memory_seq_rm(self.mem, slot.seq, len(slot.cached), -1)
                self._finish(slot, "error", error)
            return True
        now = time.perf_counter()
        for slot, n, row in rows:
            if slot.state == GEN:
                slot.cached.append(slot.last)
            else:
                slot.cached += slot.pending[slot.done : slot.done + n]
                slot.done += n
                if row < 0:
                    continue
                slot.state, slot.t1 = GEN, now
                slot.job.stats.prompt_seconds = now - slot.t0
            self._sample(slot, row)
        return True

    def _fill(self) -> list:
        """Fill the batch; return (slot, tokens added, row of its logits or -1) for each slot in it."""
        b, seq, rows, n = self.batch, self._seq, [], 0
        for slot in self.slots:
            if slot.state == GEN:
                b.token[n], b.pos[n], b.logits[n] = slot.last, len(slot.cached), 1
                seq[n][0] = slot.seq
                rows.append((slot, 1, n))
                n += 1
        prompts = sorted((s for s in self.slots if s.state == PROMPT), key=lambda s: s.last_used)
        if prompts:
            # Prompts fill what the batch and the cells not held by running requests leave.
            held = sum(len(s.cached) for s in self.slots if s.state != IDLE)
            budget = min(self.n_batch - n, self.n_ctx - held - n)
            if budget <= 0 and not rows:
                budget = 1  # nothing else to decode: let llama_decode say there is no room
            for slot in prompts:
                if budget <= 0:
                    break
                chunk = slot.pending[slot.done : slot.done + budget]
                pos = len(slot.cached)
                for i, token in enumerate(chunk, n):
                    b.token[i], b.pos[i], b.logits[i] = token, pos, 0
                    seq[i][0] = slot.seq
                    pos += 1
                k, last = len(chunk), slot.done + len(chunk) == len(slot.pending)
                n += k
                budget -= k
                if last:
                    b.logits[n - 1] = 1
                rows.append((slot, k, n - 1 if last else -1))
        b.n_tokens = n
        return rows

    def _make_room(self) -> bool:
        """The KV cache is full: drop the cache of the least recently used idle slot, or
        else end the running request that holds the most cells ("length")."""
        idle = [s for s in self.slots if s.state == IDLE and s.cached]
        if idle:
            self._forget(min(idle, key=lambda s: s.last_used))
            return True
        running = [s for s in self.slots if s.state != IDLE]
        if not running:
            return False
        slot = max(running, key=lambda s: len(s.cached))
        self._finish(slot, "length")
        self._forget(slot)
        return True

    def _forget(self, slot: Slot) -> None:
        self.C.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        slot.cached = []

    def _sample(self, slot: Slot, row: int) -> None:
        token = self.C.llama_sampler_sample(slot.sampler, self.ptr, row)
        if token not in self._pieces:
            self._pieces[token] = None if self.model.is_eog(token) else self.model.piece(token)
        piece = self._pieces[token]
        if piece is None:
            return self._finish(slot, "stop")
        slot.n_gen += 1
        slot.job.stats.completion_tokens = slot.n_gen
        text = slot.utf8.decode(piece)
        if text:
            out = slot.stops.feed(text)
            if out:
                self._emit(slot, out)
            if slot.stops.hit:
                return self._finish(slot, "stop")
        # The sampled token is decoded at the next step, at position len(cached).
        if slot.n_gen == slot.job.max_tokens or len(slot.cached) + 1 >= self.n_ctx:
            return self._finish(slot, "length")
        slot.last = token

    def _emit(self, slot: Slot, text: str) -> None:
        if slot.job.stream:
            slot.job.events.put(("piece", text))
        else:
            slot.text.append(text)

    def _finish(self, slot: Slot, reason: str, error: Exception | None = None) -> None:
        job, now = slot.job, time.perf_counter()
        stats = job.stats
        if reason in ("stop", "length") and not slot.stops.hit:
            out = slot.stops.feed(slot.utf8.decode(b"", final=True))
            if slot.stops.hit:
                reason = "stop"
            else:
                out += slot.stops.flush()
            if out:
                self._emit(slot, out)
        if slot.text:
            job.events.put(("piece", "".join(slot.text)))
        if slot.state == PROMPT:
            stats.prompt_seconds = now - slot.t0
        else:
            stats.generation_seconds = now - slot.t1
        stats.finish_reason = "stop" if reason == "error" else reason
        self.generated_tokens += stats.completion_tokens
        self.C.llama_sampler_free(slot.sampler)
        slot.job, slot.sampler, slot.state = None, None, IDLE
        self.clock += 1
        slot.last_used = self.clock
        # The slot is free before the client hears it is done: /health agrees with the reply.
        job.events.put(("error", error) if error is not None else ("done", stats))


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    if a[:n] == b[:n]:
        return n
    i = 0
    while a[i] == b[i]:
        i += 1
    return i
