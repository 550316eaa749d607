"""Will the model and its context cache fit in memory? Asked before loading, so a
machine that is too small gets one clear line instead of the OOM killer."""

from __future__ import annotations

from ..errors import ResourceError
from . import hardware

DEFAULT_CTX = 4096
MIN_CTX = 512
OVERHEAD = 96 << 20  # compute buffers and the runtime itself
KV_ELEMENT = 2  # the KV cache is f16


def kv_cache_bytes(gguf: dict, n_ctx: int) -> int:
    """Bytes of llama.cpp's KV cache for ``n_ctx`` tokens (0 when the shape is unknown)."""
    shape = gguf.get("shape") or {}
    n_layer, n_head = shape.get("block_count", 0), shape.get("head_count", 0)
    if not n_layer or not n_head:
        return 0
    head_k = shape.get("key_length") or shape.get("embedding_length", 0) // n_head
    head_v = shape.get("value_length") or head_k
    return n_ctx * n_layer * shape.get("head_count_kv", n_head) * (head_k + head_v) * KV_ELEMENT


def plan_context(model: dict, requested: int, available: int | None = None) -> int:
    """The context size to use: the one asked for if it fits, else the largest default
    (min(trained, 4096), halved down to 512) that fits; ResourceError if none does."""
    available = hardware.memory()["available"] if available is None else available
    trained = model["gguf"].get("context_length") or DEFAULT_CTX

    def need(ctx: int) -> int:
        return model["size"] + kv_cache_bytes(model["gguf"], ctx) + OVERHEAD

    if requested > 0:
        if not available or need(requested) <= available:
            return requested
        raise ResourceError(_message(model, requested, need(requested), available, need))
    ctx = min(trained, DEFAULT_CTX)
    while available and need(ctx) > available and ctx > MIN_CTX:
        ctx //= 2
    if available and need(ctx) > available:
        raise ResourceError(_message(model, ctx, need(ctx), available, need))
    return ctx


def _message(model: dict, ctx: int, needed: int, available: int, need) -> str:
    mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
    kv = kv_cache_bytes(model["gguf"], ctx)
    sizes = (2**k for k in range(20, 8, -1))
    fitting = next((c for c in sizes if c < ctx and need(c) <= available), None)
    hint = (f"try --ctx-size {fitting} or a smaller quantization" if fitting
            else "this model is too big for this machine: use a smaller quantization or model")  # fmt: skip
    return (f"{model['name']} needs about {mib(needed)} of memory (model {mib(model['size'])} + "
            f"context cache {mib(kv)} for {ctx:,} tokens) but only {mib(available)} is available; "
            f"{hint}")  # fmt: skip
