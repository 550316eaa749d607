"""OpenAI-compatible request checking (no I/O here).

Every malformed request becomes an ``ApiError`` with OpenAI's error shape and a
4xx status; nothing a client sends can reach llama.cpp unchecked. A field the
server does not know, or cannot honour, is a 400 that names it: a client must
never believe it got what it asked for when it did not. Fields that are only
hints (``user``, ``metadata``, ``store``, ...) are accepted and change nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

from ..errors import UsageError
from ..llama.job import Sampling

MAX_STOP = 4
MAX_N = 8  # and at most the server's slots
MAX_TOP_LOGPROBS = 20
# Accepted and without effect on the answer (as llama-server and OpenAI's own API do).
HINTS = {"model", "user", "metadata", "store", "service_tier", "prediction", "cache_prompt",
         "reasoning_effort", "safety_identifier", "prompt_cache_key"}  # fmt: skip
COMMON = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
          "seed", "stop", "stream", "stream_options", "n", "logit_bias", "frequency_penalty",
          "presence_penalty", "response_format", "json_schema", "grammar"}  # fmt: skip


# A client that went away, or stopped reading until the send timeout (front.py) ran out.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, TimeoutError)


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
    n: int = 1
    logprobs: int | None = None  # None: none; k: each token's log-probability and k alternatives
    logit_bias: dict = field(default_factory=dict)  # token id -> bias
    grammar: str | None = None  # GBNF, from grammar, json_schema or response_format
    json_schema: dict | None = None  # the schema behind ``grammar``, when there is one
    tools: list = field(default_factory=list)
    tool_choice: object = "auto"  # "auto" | "none" | "required" | {"type": "function", ...}
    parallel_tool_calls: bool = False  # as llama-server: one call unless the request asks for more
    reasoning_format: str = "auto"  # "auto": <think> text as reasoning_content; "none": inline
    template_kwargs: dict = field(default_factory=dict)


# Anthropic's error types, by status (its clients read ``error.type``).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                   503: "overloaded_error"}  # fmt: skip


def error_body(e: ApiError, path: str) -> dict:
    """An error in the shape of the API the path belongs to: Anthropic's for its Messages
    API, OpenAI's for every other route (llama-server answers its own routes so too)."""
    if path.startswith("/v1/messages"):
        kind = ANTHROPIC_TYPES.get(e.status, "invalid_request_error" if e.status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": e.message}}
    return e.body()


def key_matches(headers, key: str) -> bool:
    """``Authorization: Bearer KEY`` (OpenAI's clients) or ``X-Api-Key: KEY`` (Anthropic's),
    compared in constant time."""
    import hmac

    auth = headers.get("Authorization") or ""
    given = auth[7:] if auth.startswith("Bearer ") else headers.get("X-Api-Key") or ""
    return hmac.compare_digest(given.encode(), key.encode())


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


def number(body, key, lo, hi, integer=False):
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


def boolean(body, key, default=False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be true or false", param=key)
    return v


def check_fields(body: dict, known: set[str]) -> None:
    """A field the server does not know would be silently ignored: refuse it instead."""
    for key in body:
        if key not in known and key not in HINTS:
            raise ApiError(400, f"'{key}' is not supported by this server; remove it", param=key,
                           code="unsupported_parameter")  # fmt: skip


def check_model(body: dict) -> None:
    """A bundle serves one model: any name is answered by it (as llama-server does)."""
    name = body.get("model")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "'model' must be a string", param="model")


def common(body: dict, defaults: Sampling, default_max: int, max_n: int) -> dict:
    n = number(body, "n", 1, min(MAX_N, max_n), integer=True) or 1
    max_tokens = number(body, "max_completion_tokens", 1, 2**31 - 1, integer=True)
    if max_tokens is None:
        max_tokens = number(body, "max_tokens", 1, 2**31 - 1, integer=True)
    changes = {}
    for key, field_, lo, hi, integer in (
        ("temperature", "temp", 0, 2, False), ("top_p", "top_p", 0, 1, False),
        ("top_k", "top_k", 0, 1_000_000, True), ("min_p", "min_p", 0, 1, False),
        ("repeat_penalty", "repeat_penalty", 0, 10, False), ("seed", "seed", -(2**63), 2**64 - 1, True),
        ("frequency_penalty", "frequency_penalty", -2, 2, False),
        ("presence_penalty", "presence_penalty", -2, 2, False),
    ):  # fmt: skip
        v = number(body, key, lo, hi, integer)
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
        "stream": boolean(body, "stream"),
        "include_usage": boolean(opts, "include_usage"),
        "n": n,
        "logit_bias": logit_bias(body),
        **structured(body),
    }


def logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}``, bias in [-100, 100]; -100 bans the token outright."""
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, "'logit_bias' must be an object of token ids to biases", param="logit_bias")
    out = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise ApiError(
                400, f"'logit_bias' keys must be token ids, not {key!r}", param="logit_bias"
            ) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ApiError(400, f"'logit_bias' values must be numbers from -100 to 100 (token {key})",
                           param="logit_bias")  # fmt: skip
        out[token] = float("-inf") if value <= -100 else float(value)
    return out


def structured(body: dict) -> dict:
    """``response_format`` (OpenAI), ``json_schema`` and ``grammar`` (llama-server): at most one."""
    from ..llama.schema import json_grammar

    given = [k for k in ("response_format", "json_schema", "grammar") if body.get(k) is not None]
    if len(given) > 1:
        raise ApiError(400, f"'{given[0]}' and '{given[1]}' do not go together; send one", param=given[1])
    schema = None
    try:
        if "grammar" in given:
            if not isinstance(body["grammar"], str) or not body["grammar"].strip():
                raise ApiError(400, "'grammar' must be a GBNF grammar (a non-empty string)", param="grammar")
            return {"grammar": body["grammar"], "json_schema": None}
        if "json_schema" in given:
            schema = body["json_schema"]
            return {"grammar": json_grammar(schema), "json_schema": schema}
        if "response_format" in given:
            return response_format(body["response_format"], json_grammar)
    except UsageError as e:
        raise ApiError(400, str(e), param=given[0]) from None
    return {"grammar": None, "json_schema": None}


def response_format(rf, json_grammar) -> dict:
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(400, "'response_format' must be {\"type\": \"text\"|\"json_object\"|\"json_schema\"}",
                       param="response_format")  # fmt: skip
    if rf["type"] == "text":
        return {"grammar": None, "json_schema": None}
    if rf["type"] == "json_object":
        return {"grammar": json_grammar(None), "json_schema": {"type": "object"}}
    spec = rf.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise ApiError(400, "'response_format.json_schema' must be {\"name\": ..., \"schema\": {...}}",
                       param="response_format")  # fmt: skip
    schema = spec.get("schema", {"type": "object"})
    return {"grammar": json_grammar(schema), "json_schema": schema}


def completion_request(body: dict, defaults: Sampling, default_max: int, max_n: int = MAX_N) -> GenRequest:
    check_fields(body, COMMON | {"prompt", "echo", "logprobs", "best_of"})
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string", param="prompt")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "only best_of=1 is supported", param="best_of")
    k = number(body, "logprobs", 0, 5, integer=True)  # the legacy API: an int, up to 5
    return GenRequest(messages=None, prompt=prompt, echo=boolean(body, "echo"), logprobs=k,
                      **common(body, defaults, default_max, max_n))  # fmt: skip


def embedding_inputs(body: dict) -> tuple[list[str], str]:
    """OpenAI's ``input`` or llama-server's ``content`` (the same thing, by either name)."""
    check_fields(body, {"input", "content", "encoding_format", "dimensions"})
    if "content" in body and "input" not in body:
        body = {**body, "input": body["content"]}
    if body.get("dimensions") is not None:
        raise ApiError(400, "'dimensions' is not supported: this model's embeddings have a fixed size",
                       param="dimensions")  # fmt: skip
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
