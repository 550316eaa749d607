"""Choosing each next token: llama.cpp's sampler chains, a grammar that constrains the
text, logit biases, and the log-probabilities a request asks for.

A grammar (GBNF; JSON schemas are turned into one) is checked the way llama-server
checks it, not against the whole vocabulary at every token: the token is first
sampled without the grammar, and only if the grammar refuses it is the token
sampled again with the grammar applied to every candidate. A model that follows
the format (most tokens, most of the time) pays one single-token check per token.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import tempfile

from ..errors import UsageError
from .backend import recent_logs
from .job import Job, Sampling

NEG_INF = float("-inf")


def _add(C, chain, sampler) -> None:
    C.llama_sampler_chain_add(chain, sampler)


def make_chain(C, n_vocab: int, s: Sampling, bias: dict[int, float], first=None):
    """A llama.cpp sampler chain in llama.cpp's own order: (a grammar,) logit biases,
    penalties, then greedy, or top-k, top-p, min-p, temperature and a seeded draw."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    if first is not None:
        _add(C, chain, first)
    if bias:
        arr = (C.llama_logit_bias * len(bias))(*(C.llama_logit_bias(t, b) for t, b in bias.items()))
        _add(C, chain, C.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))
    if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
        penalties = C.llama_sampler_init_penalties(
            n_vocab, s.repeat_last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
        )
        _add(C, chain, penalties)
    if s.temp <= 0:
        _add(C, chain, C.llama_sampler_init_greedy())
        return chain
    seed = s.seed if s.seed >= 0 else int.from_bytes(os.urandom(4), "little")
    if s.top_k > 0:
        _add(C, chain, C.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        _add(C, chain, C.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        _add(C, chain, C.llama_sampler_init_min_p(s.min_p, 1))
    _add(C, chain, C.llama_sampler_init_temp(s.temp))
    _add(C, chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def make_grammar(C, vocab, grammar: str, triggers: tuple[str, ...] = ()):
    """llama.cpp's grammar sampler for GBNF ``grammar``; with ``triggers`` (regexes, as
    ``llama_sampler_init_grammar_lazy_patterns`` takes them: the grammar is fed from the first
    capture group of the one that matches) it is lazy and constrains the text only from
    there on (a tool call inside free text).
    An invalid grammar is a UsageError with llama.cpp's own complaint."""
    text = grammar.encode()
    with _stderr_captured() as said:  # llama.cpp's grammar parser prints its errors itself
        g = _init_grammar(C, vocab, text, triggers)
    if not g:
        why = [
            line.split("error parsing grammar:", 1)[1].strip()
            for line in said
            if "error parsing grammar:" in line
        ]
        why += [line.strip() for line in recent_logs().splitlines() if "grammar" in line]
        raise UsageError(f"the grammar is not valid GBNF: {why[0] if why else 'llama.cpp refused it'}")
    return g


def _init_grammar(C, vocab, text: bytes, triggers):
    if triggers:
        pats = [t.encode() for t in triggers]
        arr = (ctypes.c_char_p * len(pats))(*pats)
        return C.llama_sampler_init_grammar_lazy_patterns(vocab, text, b"root", arr, len(pats), None, 0)
    return C.llama_sampler_init_grammar(vocab, text, b"root")


@contextlib.contextmanager
def _stderr_captured():
    """What C code writes to stderr meanwhile, as lines (not shown). Another thread's
    message written in the same microseconds would be caught too; none of ours writes there
    while a grammar is made."""
    lines: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:
        yield lines
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines += tmp.read(1 << 16).decode("utf-8", "replace").splitlines()


class Sampler:
    """What one job samples with: a chain without the grammar, and (with a grammar) a
    chain with it in front, kept in step (both see every accepted token)."""

    def __init__(self, C, model, job: Job):
        self.C, self.model = C, model
        self.free = make_chain(C, model.n_vocab, job.sampling, job.logit_bias)
        self.constrained = self.grammar = None
        if job.grammar:
            self.grammar = make_grammar(C, model.vocab, job.grammar, tuple(job.grammar_triggers))
            self.constrained = make_chain(C, model.n_vocab, job.sampling, job.logit_bias, first=self.grammar)
            self._one = (C.llama_token_data * 1)()
            self._one_arr = C.llama_token_data_array(self._one, 1, -1, False)

    def sample(self, ctx, row: int) -> int:
        C = self.C
        token = C.llama_sampler_sample(self.free, ctx, row)
        if self.constrained is None:
            return token
        if self._allowed(token):
            C.llama_sampler_accept(self.constrained, token)
            return token
        token = C.llama_sampler_sample(self.constrained, ctx, row)  # the grammar over every candidate
        C.llama_sampler_accept(self.free, token)
        return token

    def _allowed(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        self._one_arr.data, self._one_arr.size, self._one_arr.selected = self._one, 1, -1
        self.C.llama_sampler_apply(self.grammar, ctypes.byref(self._one_arr))
        return self._one[0].logit != NEG_INF

    def close(self) -> None:
        for chain in (self.free, self.constrained):
            if chain:
                self.C.llama_sampler_free(chain)  # a chain frees the samplers in it (the grammar too)
        self.free = self.constrained = self.grammar = None


def logprobs(C, model, ctx, row: int, token: int, top: int) -> dict:
    """OpenAI's entry for one sampled token: its log-probability under the model (the raw
    distribution, before sampling settings) and the ``top`` most likely tokens."""
    n = model.n_vocab
    logits = (ctypes.c_float * n).from_address(ctypes.addressof(C.llama_get_logits_ith(ctx, row).contents))
    values = memoryview(logits).cast("B").cast("f")
    peak = max(values)
    lse = peak + math.log(math.fsum(math.exp(v - peak) for v in values))
    entry = _entry(model, token, values[token] - lse)
    if top:
        best = sorted(range(n), key=values.__getitem__, reverse=True)[:top]
        entry["top_logprobs"] = [_entry(model, t, values[t] - lse) for t in best]
    else:
        entry["top_logprobs"] = []
    return entry


def _entry(model, token: int, logprob: float) -> dict:
    raw = model.piece(token, special=True)
    return {"id": token, "token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}
