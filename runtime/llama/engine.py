"""The one generation engine: every mode (``-p``, ``--cli``, the server) decodes here.

Like llama-server's parallel slots (and llama.cpp's CLI, which moved onto them).
The context has ``n_slots`` sequences over one unified KV cache of ``n_ctx``
cells; ``-p`` and ``--cli`` use one slot, the server ``--parallel``. This module
owns sampling, prefix reuse and its cache rules, stop strings, UTF-8 assembly
and the statistics; nothing else calls ``llama_decode`` for text.

Each ``step()`` is one ``llama_decode``: every generating slot adds the token it
sampled last, and prompts being processed fill the rest of the batch in chunks,
so a new request starts between two steps without stalling the running ones.
Each slot then samples from its own row of logits with its own sampler chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from ..errors import ModelError, UsageError, check_prompt
from . import rpc
from .job import Job
from .model import Model, new_context
from .sampler import Sampler, logprobs
from .slots import GEN, IDLE, PROMPT, Slot, pick

NO_KV_ROOM = 1  # llama_decode: no room in the KV cache for the batch (the cache is left as it was)


class Engine:
    """One llama.cpp context decoding for up to ``n_slots`` requests at once.

    Not thread-safe: one thread calls ``add``, ``step``, ``generate`` and ``close``
    (the server's worker thread, or the main thread for ``-p`` and ``--cli``)."""

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int, n_batch: int = 512, n_slots: int = 1):
        C = model.C
        self.C, self.model, self.n_threads, self.n_batch = C, model, n_threads, n_batch
        self.ptr = new_context(model, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, n_seq_max=n_slots)
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
        self.placement = None  # where the model runs (llama/gpu.py's Plan), set by open_engine
        self.pool = None  # with --rpc: (workers, pool.Split), set by open_engine
        self.decodes = 0  # llama_decode calls that succeeded, and the busy slots summed over them
        self.busy_per_decode = 0
        self._pieces: dict[int, bytes | None] = {}  # token -> its text, None for end of generation
        self.broken: Exception | None = None  # an RPC worker went away: every request fails so

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
    def add(self, job: Job) -> bool:
        """Start ``job`` on the idle slot whose cache shares the longest prefix with its
        prompt (``slots.pick``); False when every slot is busy."""
        tokens = job.tokens
        best, keep = pick(self.slots, tokens)
        if best is None:
            return False
        if self.broken is not None:
            job.events.put(("error", self.broken))
            return True
        try:
            check_prompt(len(tokens), self.n_ctx)
        except UsageError as e:
            job.events.put(("error", e))
            return True
        C = self.C
        try:
            sampler = Sampler(C, self.model, job)  # an invalid grammar is the request's error
        except UsageError as e:
            job.events.put(("error", e))
            return True
        if keep and C.llama_memory_seq_pos_min(self.mem, best.seq) > 0:
            keep = 0  # the start of the sequence left the cache (sliding-window attention)
        if not C.llama_memory_seq_rm(self.mem, best.seq, keep, -1):
            keep = 0  # a cache that cannot drop a tail (recurrent models): start over
            C.llama_memory_seq_rm(self.mem, best.seq, -1, -1)
        del best.cached[keep:]
        self.clock += 1
        best.take(job, keep, self.clock, sampler)
        job.stats.prompt_tokens, job.stats.cached_tokens = len(tokens), keep
        if job.max_tokens == 0:
            self._finish(best, "length")
        return True

    def warm_up(self) -> None:
        """One throwaway decode, as llama.cpp's tools do at start: a GPU backend builds its
        pipelines (Vulkan compiles shaders on first use) now, not in the first request."""
        C = self.C
        one = (C.llama_token * 1)(max(C.llama_vocab_bos(self.model.vocab), 0))
        C.llama_decode(self.ptr, C.llama_batch_get_one(one, 1))
        C.llama_memory_seq_rm(self.mem, 0, -1, -1)

    def generate(self, job: Job) -> Iterator[str]:
        """Run ``job`` on this thread and yield its text as it comes (``-p`` and ``--cli``:
        one slot, no worker). Its stats are in ``job.stats`` at the end; an error is raised.
        Stopped early (Ctrl-C, or the caller closes the iterator), the job is cancelled and
        its slot forgets its cache: the step it broke into may have left it half-written."""
        if not self.add(job):
            raise RuntimeError("the engine has no idle slot")
        finished = False
        try:
            while True:
                while not job.events.empty():
                    tag, value, *_ = job.events.get_nowait()
                    if tag == "piece":
                        if value:
                            yield value
                    elif tag == "error":
                        finished = True
                        raise value
                    else:
                        finished = True
                        return
                if not self.step() and job.events.empty():
                    raise RuntimeError("the engine stopped before the job ended")
        finally:
            if not finished:
                job.cancelled.set()
                for slot in self.slots:
                    if slot.job is job:
                        self._finish(slot, "cancelled")
                        self._forget(slot)

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
            if rc == 0 and self.model.remote and self._worker_gone():
                return True
            if rc == 0:
                self.decodes += 1
                self.busy_per_decode += len(rows)
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

    def _worker_gone(self) -> bool:
        """With layers on RPC workers: whether one went away during this step. ggml's RPC
        client answers a dead connection with zeros (bundler/ggml_source.py), so the step's
        logits are wrong and nothing is sampled from them; the share of the model that
        worker held is gone, so every later request fails too, in the same words."""
        self.C.llama_synchronize(self.ptr)  # the step's last reply has come back, or failed
        endpoint = rpc.failed()
        if endpoint is None:
            return False
        self.broken = rpc.gone(endpoint)
        self.fail_all(self.broken)
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
        token = slot.sampler.sample(self.ptr, row)
        if slot.job.special:
            piece = None if self.model.is_eog(token) else self.model.piece(token, special=True)
        else:
            if token not in self._pieces:
                self._pieces[token] = None if self.model.is_eog(token) else self.model.piece(token)
            piece = self._pieces[token]
        if piece is None:
            return self._finish(slot, "stop")
        if slot.job.logprobs is not None:
            slot.probs.append(logprobs(self.C, self.model, self.ptr, row, token, slot.job.logprobs))
        elif slot.job.token_ids:  # the ids alone, without the cost of a softmax
            slot.probs.append({"id": token})
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
        probs, slot.probs = slot.probs, []
        if slot.job.stream:
            slot.job.events.put(("piece", text, probs))
        else:
            slot.text.append(text)
            slot.all_probs += probs

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
        if slot.probs:  # tokens whose text never showed (held back, or part of a stop string)
            if job.stream:
                job.events.put(("piece", "", slot.probs))
            else:
                slot.all_probs += slot.probs
            slot.probs = []
        if slot.text or slot.all_probs:
            job.events.put(("piece", "".join(slot.text), slot.all_probs))
        if slot.state == PROMPT:
            stats.prompt_seconds = now - slot.t0
        else:
            stats.generation_seconds = now - slot.t1
        stats.finish_reason = "stop" if reason == "error" else reason
        stats.stop_word = slot.stops.word
        self.generated_tokens += stats.completion_tokens
        slot.sampler.close()
        slot.job, slot.sampler, slot.state = None, None, IDLE
        self.clock += 1
        slot.last_used = self.clock
        # The slot is free before the client hears it is done: /health agrees with the reply.
        job.events.put(("error", error) if error is not None else ("done", stats))
