"""Embeddings: a mean-pooled, L2-normalised vector per input, in a context of their own
(an embedding context cannot share the engine's KV cache)."""

from __future__ import annotations

import math

from ..errors import ModelError
from .model import new_context


class Embedder:
    def __init__(self, engine):
        self.C, self.model = engine.C, engine.model
        self.ctx = new_context(engine.model, n_ctx=engine.n_ctx, n_threads=engine.n_threads,
                               n_batch=engine.n_ctx, embeddings=True)  # fmt: skip

    def embed(self, tokens: list[int]) -> list[float]:
        C = self.C
        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        arr = (C.llama_token * len(tokens))(*tokens)
        if C.llama_decode(self.ctx, C.llama_batch_get_one(arr, len(tokens))) != 0:
            raise ModelError("llama.cpp failed to compute the embedding")
        ptr = C.llama_get_embeddings_seq(self.ctx, 0)
        vec = [float(ptr[i]) for i in range(C.llama_model_n_embd(self.model.ptr))]
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def close(self) -> None:
        if self.ctx:
            self.C.llama_free(self.ctx)
            self.ctx = None
