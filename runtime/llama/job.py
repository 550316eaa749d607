"""What a generation asks for (``Job``, ``Sampling``) and what it reports (``Stats``).

One shape for every mode: ``-p`` and ``--cli`` hand a job to the engine on their
own thread, the server's handlers through the worker's queue. A job's events
arrive on its queue: ``("piece", text, logprobs)`` as text is ready (``logprobs``: the
entries of the tokens behind it, when the job asks for them or for ``token_ids``), then
``("done", stats)`` or ``("error", exception)``; embedding jobs send ``("embeddings", vectors)``.
"""

from __future__ import annotations

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
    frequency_penalty: float = 0.0  # OpenAI's, as llama.cpp's penalties sampler applies them
    presence_penalty: float = 0.0
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
    stop_word: str | None = None  # the stop string that ended the text (None: end of text or length)


@dataclass(eq=False)
class Job:
    kind: str  # "generate" | "embed"
    tokens: list = field(default_factory=list)  # generate: prompt tokens; embed: list of token lists
    stop: list = field(default_factory=list)  # stop strings: the text ends before the first one
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int = -1  # -1: until the model stops or the context is full
    stream: bool = True  # False: the text comes as one piece at the end (no wake-up per token)
    grammar: str | None = None  # GBNF the text must match (llama.cpp's grammar sampler)
    grammar_triggers: tuple = ()  # regexes; non-empty: the grammar applies from where one matches
    special: bool = False  # show control tokens in the text (tool-call markers such as [TOOL_CALLS])
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and k alternatives
    logit_bias: dict = field(default_factory=dict)  # token id -> added to its logit (-inf: banned)
    token_ids: bool = False  # without logprobs: each piece's event carries [{"id": token}, ...]
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stats: Stats = field(default_factory=Stats)
