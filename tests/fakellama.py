"""A fake of the slice of llama.cpp's C API that the engine drives, for unit tests.

Not a stub: ``FakeLlama`` models a unified KV cache of ``n_ctx`` cells shared by
every sequence, the way llama.cpp's does, and checks what llama.cpp checks (or
would silently get wrong):

- ``llama_decode`` returns 1 and leaves the cache as it was when the batch does not
  fit; it asserts that each sequence's positions are contiguous (the next position
  of a sequence is its current length), that every token names exactly one known
  sequence and that the batch is no larger than ``n_batch``; it records every call
  (``decodes``), failed ones too;
- ``llama_memory_seq_rm`` removes ``[p0, p1)``; with ``recurrent=True`` it refuses
  (False, nothing removed) to drop a tail while keeping a head, as Mamba/RWKV do;
- with ``window=W`` (sliding-window attention) a sequence keeps only its last ``W``
  positions after each decode, so ``llama_memory_seq_pos_min`` becomes > 0;
- samplers are tracked: freeing one twice, or sampling a row without logits, fails.

The "model" is deterministic: the token sampled after a row is ``script[token of that
row]`` (``FakeModel.chain`` writes such scripts), so a test crafts the exact pieces
(bytes) a prompt produces and where generation ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

EOG = 2  # end of generation
FILLER = 3  # what follows a token with no script: itself again, forever
FILLER_PIECE = b"."


@dataclass
class Decode:
    """One ``llama_decode`` call: its tokens as (seq, pos, token, wants logits), and its result."""

    rows: list[tuple[int, int, int, bool]]
    rc: int = 0

    def seqs(self) -> set[int]:
        return {r[0] for r in self.rows}

    def tokens(self, seq: int) -> list[int]:
        return [r[2] for r in self.rows if r[0] == seq]

    def positions(self, seq: int) -> list[int]:
        return [r[1] for r in self.rows if r[0] == seq]


@dataclass
class Seq:
    tokens: list[int] = field(default_factory=list)  # every position from 0, as decoded
    lo: int = 0  # the first position still in the cache (> 0: slid out of the window)

    @property
    def cells(self) -> int:
        return len(self.tokens) - self.lo


class FakeModel:
    """What the engine reads of ``runtime.llama.model.Model``: C, ptr, n_vocab, piece,
    is_eog (and tokenize, one token per byte shifted past the special tokens)."""

    def __init__(self, C: FakeLlama | None = None, n_vocab: int = 100_000):
        self.C = C or FakeLlama()
        self.C.model = self
        self.ptr = object()
        self.n_vocab = n_vocab
        self.n_gpu_layers = 0  # the CPU: no op offload
        self.remote = False  # no layer on an RPC worker
        self.pieces: dict[int, bytes] = {EOG: b"</s>", FILLER: FILLER_PIECE}
        self.script: dict[int, int] = {}
        self._next_id = 10_000

    def chain(self, after: int, pieces: list[bytes], end: int | None = EOG) -> list[int]:
        """Script the model: after token ``after`` it generates fresh tokens whose pieces are
        ``pieces``, then ``end`` (None: the filler, forever). Returns the new tokens."""
        new = []
        for piece in pieces:
            tok = self._next_id
            self._next_id += 1
            self.pieces[tok] = piece
            new.append(tok)
        seq = [after, *new] + ([end] if end is not None else [])
        for a, b in zip(seq, seq[1:], strict=False):
            self.script[a] = b
        return new

    def next_token(self, token: int) -> int:
        return self.script.get(token, FILLER)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        return self.pieces.get(token, b"<%d>" % token)

    def is_eog(self, token: int) -> bool:
        return token == EOG

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return [256 + b for b in text.encode()]


class FakeLlama:
    """The C API functions the engine calls, over one modelled context."""

    def __init__(self, *, recurrent: bool = False, window: int | None = None, n_ctx_pad: int = 0):
        self.recurrent, self.window, self.n_ctx_pad = recurrent, window, n_ctx_pad
        self.model: FakeModel | None = None
        self.decodes: list[Decode] = []
        self.seqs: dict[int, Seq] = {}
        self.live_samplers: set[int] = set()
        self.freed: list[str] = []
        self.fail_context = False
        self.fail_next: tuple[int, int] | None = None  # (rc, tokens written first) for the next decode
        self.interrupt_at: int | None = None  # raise Interrupt at this decode call (1-based)
        self.params = None
        self._last_rows: list[tuple[int, int, int, bool]] = []
        self._sampler_id = 0

    # -- context ----------------------------------------------------------------
    def llama_context_default_params(self):
        return SimpleNamespace(n_ctx=512, n_batch=2048, n_ubatch=512, n_seq_max=1, kv_unified=False,
                               n_threads=4, n_threads_batch=4, no_perf=False, embeddings=False,
                               pooling_type=-1)  # fmt: skip

    def llama_init_from_model(self, model_ptr, params):
        assert self.model is not None and model_ptr is self.model.ptr
        if self.fail_context:
            return None
        self.params = params
        self.n_ctx = params.n_ctx + self.n_ctx_pad
        self.seqs = {i: Seq() for i in range(params.n_seq_max)}
        return SimpleNamespace(name="ctx")

    def llama_n_ctx(self, ctx) -> int:
        return self.n_ctx

    def llama_get_memory(self, ctx):
        return SimpleNamespace(name="mem", ctx=ctx)

    def llama_free(self, ctx) -> None:
        self.freed.append("ctx")

    # -- batches ----------------------------------------------------------------
    def llama_batch_init(self, n_tokens: int, embd: int, n_seq_max: int):
        assert embd == 0
        return SimpleNamespace(n_tokens=0, token=[0] * n_tokens, pos=[0] * n_tokens, logits=[0] * n_tokens,
                               seq_id=[[0] * n_seq_max for _ in range(n_tokens)], n_seq_id=[0] * n_tokens,
                               capacity=n_tokens)  # fmt: skip

    def llama_batch_free(self, batch) -> None:
        self.freed.append("batch")

    @property
    def used(self) -> int:
        return sum(s.cells for s in self.seqs.values())

    def llama_decode(self, ctx, batch) -> int:
        n = batch.n_tokens
        rows = []
        for i in range(n):
            assert batch.n_seq_id[i] == 1, f"token {i} names {batch.n_seq_id[i]} sequences"
            rows.append((batch.seq_id[i][0], batch.pos[i], batch.token[i], bool(batch.logits[i])))
        call = Decode(rows)
        self.decodes.append(call)
        if self.interrupt_at is not None and len(self.decodes) == self.interrupt_at:
            call.rc = None
            raise Interrupt(f"interrupted at decode {self.interrupt_at}")
        n_batch = min(self.n_ctx, self.params.n_batch)  # llama.cpp's cparams.n_batch
        assert 0 < n <= n_batch, f"a batch of {n} tokens (n_batch {n_batch})"
        expect = {s: len(q.tokens) for s, q in self.seqs.items()}
        for seq, pos, _, _ in rows:
            assert seq in self.seqs, f"unknown sequence {seq}"
            assert pos == expect[seq], f"seq {seq}: position {pos}, expected {expect[seq]} (not contiguous)"
            expect[seq] += 1
        if self.fail_next is not None:
            rc, written = self.fail_next
            self.fail_next = None
            self._write(rows[:written])
            call.rc = rc
            return rc
        if self.used + n > self.n_ctx:
            call.rc = 1
            return 1
        self._write(rows)
        self._last_rows = rows
        return 0

    def _write(self, rows) -> None:
        for seq, _, token, _ in rows:
            self.seqs[seq].tokens.append(token)
        if self.window is not None:
            for q in self.seqs.values():
                q.lo = max(q.lo, len(q.tokens) - self.window)

    # -- memory -----------------------------------------------------------------
    def llama_memory_seq_rm(self, mem, seq: int, p0: int, p1: int) -> bool:
        targets = list(self.seqs) if seq < 0 else [seq]
        for s in targets:
            q = self.seqs[s]
            lo, hi = max(p0, 0), len(q.tokens) if p1 < 0 else p1
            assert hi >= len(q.tokens), "the engine only ever removes a tail"
            if lo >= len(q.tokens):
                continue
            if lo > 0 and self.recurrent:
                return False  # a recurrent state cannot lose a tail
            del q.tokens[lo:]
            q.lo = min(q.lo, lo)
        return True

    def llama_memory_seq_pos_min(self, mem, seq: int) -> int:
        q = self.seqs[seq]
        return q.lo if q.tokens[q.lo :] else -1

    def cache(self, seq: int) -> list[int]:
        """The tokens of ``seq`` the cache holds (from position 0, even those slid out)."""
        return list(self.seqs[seq].tokens)

    # -- sampling ---------------------------------------------------------------
    def _sampler(self, kind: str, *args):
        self._sampler_id += 1
        return SimpleNamespace(id=self._sampler_id, kind=kind, args=args, chain=[])

    def llama_sampler_chain_default_params(self):
        return SimpleNamespace(no_perf=True)

    def llama_sampler_chain_init(self, params):
        s = self._sampler("chain")
        self.live_samplers.add(s.id)
        return s

    def llama_sampler_chain_add(self, chain, s) -> None:
        assert chain.id in self.live_samplers
        chain.chain.append(s)

    def llama_sampler_init_greedy(self):
        return self._sampler("greedy")

    def llama_sampler_init_top_k(self, k):
        return self._sampler("top_k", k)

    def llama_sampler_init_top_p(self, p, min_keep):
        return self._sampler("top_p", p)

    def llama_sampler_init_min_p(self, p, min_keep):
        return self._sampler("min_p", p)

    def llama_sampler_init_temp(self, t):
        return self._sampler("temp", t)

    def llama_sampler_init_dist(self, seed):
        return self._sampler("dist", seed)

    def llama_sampler_init_penalties(self, n_vocab, last_n, repeat, freq, present):
        return self._sampler("penalties", last_n, repeat)

    def llama_sampler_sample(self, smpl, ctx, idx: int) -> int:
        assert smpl.id in self.live_samplers, "sampling with a freed sampler"
        assert 0 <= idx < len(self._last_rows), f"row {idx} is not in the last batch"
        _, _, token, logits = self._last_rows[idx]
        assert logits, f"row {idx} has no logits"
        return self.model.next_token(token)

    def llama_sampler_free(self, smpl) -> None:
        assert smpl.id in self.live_samplers, "sampler freed twice"
        self.live_samplers.discard(smpl.id)


class Interrupt(Exception):
    """Raised inside ``llama_decode`` to stand for Ctrl-C in the middle of a step."""
