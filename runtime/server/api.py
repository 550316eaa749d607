"""OpenAI-compatible request checking and response shapes (no I/O here).

Every malformed request becomes an ``ApiError`` with OpenAI's error shape and a
4xx status; nothing a client sends can reach llama.cpp unchecked.
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import time
from dataclasses import dataclass, replace

from ..llama.job import Sampling

MAX_STOP = 4
ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenRequest:
    messages: list | None  # chat
    prompt: str | None  # completions
    sampling: Sampling
    max_tokens: int
    stop: list
    stream: bool
    include_usage: bool
    echo: bool = False


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not valid UTF-8") from None
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _number(body, key, lo, hi, integer=False):
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)):
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{key}' must be {kind}", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}, got {v}", param=key)
    return v


def _bool(body, key) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be true or false", param=key)
    return v


def check_model(body: dict, model_ids: tuple[str, ...]) -> None:
    name = body.get("model")
    if name is None:
        return
    if not isinstance(name, str):
        raise ApiError(400, "'model' must be a string", param="model")
    if name not in model_ids:
        raise ApiError(404, f"the model '{name}' does not exist; this server serves '{model_ids[0]}'",
                       code="model_not_found", param="model")  # fmt: skip


def _common(body: dict, defaults: Sampling, default_max: int) -> dict:
    if body.get("n", 1) not in (1, None) or isinstance(body.get("n"), bool):
        raise ApiError(400, "only n=1 is supported", param="n")
    max_tokens = _number(body, "max_completion_tokens", 1, 2**31 - 1, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, 2**31 - 1, integer=True)
    changes = {}
    for key, field_, lo, hi, integer in (
        ("temperature", "temp", 0, 2, False), ("top_p", "top_p", 0, 1, False),
        ("top_k", "top_k", 0, 1_000_000, True), ("min_p", "min_p", 0, 1, False),
        ("repeat_penalty", "repeat_penalty", 0, 10, False), ("seed", "seed", -(2**63), 2**64 - 1, True),
    ):  # fmt: skip
        v = _number(body, key, lo, hi, integer)
        if v is not None:
            changes[field_] = (v & 0xFFFFFFFF) if key == "seed" else v
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP}", param="stop")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", param="stream_options")
    return {
        "sampling": replace(defaults, **changes),
        "max_tokens": max_tokens if max_tokens is not None else default_max,
        "stop": stop,
        "stream": _bool(body, "stream"),
        "include_usage": _bool(opts, "include_usage"),
    }


def _content(msg: dict, i: int) -> str:
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            if not isinstance(text, str):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string", param="messages")


def chat_request(body: dict, defaults: Sampling, default_max: int) -> GenRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", param="messages")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _content(m, i)})
    return GenRequest(messages=out, prompt=None, **_common(body, defaults, default_max))


def completion_request(body: dict, defaults: Sampling, default_max: int) -> GenRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
    return GenRequest(messages=None, prompt=prompt, echo=_bool(body, "echo"),
                      **_common(body, defaults, default_max))  # fmt: skip


def embedding_inputs(body: dict) -> tuple[list[str], str]:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ApiError(400, "'input' must be a non-empty string or a list of them", param="input")
    if len(texts) > 256:
        raise ApiError(400, "'input' may hold at most 256 strings", param="input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return texts, fmt


# -- responses ---------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def usage(stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}  # fmt: skip


def timings(stats) -> dict:
    pp, tg = stats.prompt_seconds, stats.generation_seconds
    new_prompt = stats.prompt_tokens - stats.cached_tokens
    return {
        "prompt_n": new_prompt, "cached_n": stats.cached_tokens, "prompt_ms": pp * 1e3,
        "prompt_per_second": new_prompt / pp if pp else 0.0, "predicted_n": stats.completion_tokens,
        "predicted_ms": tg * 1e3, "predicted_per_second": stats.completion_tokens / tg if tg else 0.0,
    }  # fmt: skip


def finish(stats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


def envelope(kind: str, rid: str, model: str, fingerprint: str, **fields) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint, **fields}  # fmt: skip


def embedding_item(i: int, vec: list[float], fmt: str) -> dict:
    data = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if fmt == "base64" else vec
    return {"object": "embedding", "index": i, "embedding": data}
