"""OpenAI's response shapes (no I/O here): envelopes, usage, timings, log-probabilities,
tool calls and embeddings."""

from __future__ import annotations

import base64
import os
import struct
import time


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}  # fmt: skip


def timings(stats) -> dict:
    pp, tg = stats.prompt_seconds, stats.generation_seconds
    new_prompt = stats.prompt_tokens - stats.cached_tokens
    n = stats.completion_tokens
    return {  # llama-server's names
        "cache_n": stats.cached_tokens, "prompt_n": new_prompt, "prompt_ms": pp * 1e3,
        "prompt_per_token_ms": pp * 1e3 / new_prompt if new_prompt else 0.0,
        "prompt_per_second": new_prompt / pp if pp else 0.0, "predicted_n": n, "predicted_ms": tg * 1e3,
        "predicted_per_token_ms": tg * 1e3 / n if n else 0.0, "predicted_per_second": n / tg if tg else 0.0,
    }  # fmt: skip


def finish(stats, tool_calls: bool = False) -> str:
    """OpenAI's finish_reason: a reply cut by max_tokens is "length" even when it made calls
    (the last of them may be cut too)."""
    if stats.finish_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def envelope(kind: str, rid: str, model: str, fingerprint: str, **fields) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint, **fields}  # fmt: skip


def embedding_item(i: int, vec: list[float], fmt: str) -> dict:
    data = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if fmt == "base64" else vec
    return {"object": "embedding", "index": i, "embedding": data}


def chat_logprobs(entries: list[dict] | None) -> dict | None:
    """Chat's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}, ...]}``."""
    return None if entries is None else {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict] | None, offset: int = 0) -> dict | None:
    """The legacy completions shape: parallel lists, ``top_logprobs`` as {token: logprob}."""
    if entries is None:
        return None
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": offsets,
    }
