"""What a generation asks for (``Job``, ``Sampling``) and what it reports (``Stats``).

One shape for every mode: ``-p`` and ``--cli`` hand a job to the engine on their
own thread, the server's handlers through the worker's queue. A job's events
arrive on its queue: ``("piece", text)`` as text is ready, then ``("done", stats)``
or ``("error", exception)``; embedding jobs send ``("embeddings", vectors)``.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampling:
    temp: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int = -1  # -1: a random seed

    @classmethod
    def from_settings(cls, settings) -> Sampling:
        """The sampling part of the effective settings."""
        return cls(**{k: settings[k] for k in ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed")})


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    finish_reason: str = "stop"  # "stop" | "length" | "cancelled"


@dataclass(eq=False)
class Job:
    kind: str  # "generate" | "embed"
    tokens: list = field(default_factory=list)  # generate: prompt tokens; embed: list of token lists
    stop: list = field(default_factory=list)  # stop strings: the text ends before the first one
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int = -1  # -1: until the model stops or the context is full
    stream: bool = True  # False: the text comes as one piece at the end (no wake-up per token)
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stats: Stats = field(default_factory=Stats)


def make_sampler(C, n_vocab: int, s: Sampling):
    """A llama.cpp sampler chain for ``s`` (free it with ``llama_sampler_free``), in
    llama.cpp's own order: penalties, then greedy, or top-k, top-p, min-p, temperature
    and a seeded draw."""
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    if s.repeat_penalty != 1.0:
        C.llama_sampler_chain_add(
            chain, C.llama_sampler_init_penalties(n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0)
        )
    if s.temp <= 0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        return chain
    seed = s.seed if s.seed >= 0 else int.from_bytes(os.urandom(4), "little")
    if s.top_k > 0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        C.llama_sampler_chain_add(chain, C.llama_sampler_init_min_p(s.min_p, 1))
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(s.temp))
    C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
