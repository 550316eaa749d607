"""llama-server's native ``/completion``: its request fields and its answer, streamed (one
``data:`` event per piece, the last with ``"stop": true``) or not.

Its sampling knobs that this server does not have (mirostat, DRY, XTC, ...) are accepted
at their "off" value, which clients such as llama.cpp's old web page always send, and are
a 400 that names them otherwise: a client must not believe it got what it did not.
"""

from __future__ import annotations

import dataclasses

from .api import MAX_TOP_LOGPROBS, ApiError, boolean, check_fields, logit_bias, number, structured

MAX_STOP = 16
# Knobs that are off at these values (and the ones that only matter when their knob is on).
OFF = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "dynatemp_range": 0.0, "xtc_probability": 0.0,
       "dry_multiplier": 0.0, "penalize_nl": False, "top_n_sigma": -1.0, "min_keep": 0, "n_indent": 0,
       "post_sampling_probs": False, "t_max_predict_ms": 0, "timings_per_token": False, "n_cmpl": 1,
       "lora": []}  # fmt: skip
ONLY_WITH = {"mirostat_tau": "mirostat", "mirostat_eta": "mirostat", "dynatemp_exponent": "dynatemp_range",
             "xtc_threshold": "xtc_probability", "dry_base": "dry_multiplier",
             "dry_allowed_length": "dry_multiplier", "dry_penalty_last_n": "dry_multiplier",
             "dry_sequence_breakers": "dry_multiplier"}  # fmt: skip
# Accepted without effect on the text: this server always reuses a cached prefix, picks
# its own slot, and never shifts the context (n_keep is what a shift would keep).
HINTS = {"cache_prompt", "id_slot", "n_keep"}
FIELDS = {"prompt", "n_predict", "temperature", "top_k", "top_p", "min_p", "repeat_penalty",
          "repeat_last_n", "presence_penalty", "frequency_penalty", "seed", "stop", "grammar",
          "json_schema", "n_probs", "return_tokens", "stream", "logit_bias", "ignore_eos"}  # fmt: skip


@dataclasses.dataclass
class NativeRequest:
    tokens: list
    prompt: str  # the prompt as text (llama-server echoes it)
    sampling: object
    max_tokens: int
    stop: list
    stream: bool
    grammar: str | None
    n_probs: int
    return_tokens: bool
    logit_bias: dict
    ignore_eos: bool


def parse(body: dict, defaults, default_max: int, model) -> NativeRequest:
    check_fields(body, FIELDS | set(OFF) | set(ONLY_WITH) | HINTS)
    for key, off in OFF.items():
        if key in body and body[key] != off:
            raise ApiError(400, f"'{key}' is not supported by this server; leave it at {off!r} or remove it",
                           param=key, code="unsupported_parameter")  # fmt: skip
    changes = {}
    for key, field, lo, hi, integer in (
        ("temperature", "temp", 0, 10, False), ("top_k", "top_k", 0, 1_000_000, True),
        ("top_p", "top_p", 0, 1, False), ("min_p", "min_p", 0, 1, False),
        ("repeat_penalty", "repeat_penalty", 0, 10, False),
        ("repeat_last_n", "repeat_last_n", -1, 2**20, True),
        ("presence_penalty", "presence_penalty", -2, 2, False),
        ("frequency_penalty", "frequency_penalty", -2, 2, False), ("seed", "seed", -1, 2**32 - 1, True),
    ):  # fmt: skip
        v = number(body, key, lo, hi, integer)
        if v is not None:
            changes[field] = v
    n_predict = number(body, "n_predict", -1, 2**31 - 1, integer=True)
    bias = _bias(body.get("logit_bias"), model)
    ignore_eos = boolean(body, "ignore_eos")
    if ignore_eos:  # as llama-server: the end-of-generation tokens are banned
        bias.update({t: float("-inf") for t in model.eog_tokens()})
    tokens = prompt_tokens(body.get("prompt"), model)
    text = b"".join(model.piece(t, special=True) for t in tokens).decode("utf-8", "replace")
    return NativeRequest(
        tokens=tokens, prompt=text, sampling=dataclasses.replace(defaults, **changes),
        max_tokens=default_max if n_predict is None else n_predict, stop=_stop(body.get("stop")),
        stream=boolean(body, "stream"), grammar=structured(body)["grammar"],
        n_probs=number(body, "n_probs", 0, MAX_TOP_LOGPROBS, integer=True) or 0,
        return_tokens=boolean(body, "return_tokens"), logit_bias=bias, ignore_eos=ignore_eos,
    )  # fmt: skip


def prompt_tokens(prompt, model) -> list[int]:
    """llama-server's prompt forms: text (BOS added as the model wants it), token ids, or
    a list mixing both (only a leading string gets BOS), or a one-element list of either."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return model.tokenize(prompt, add_special=True)
    several = isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt)
    if isinstance(prompt, list) and prompt and not several:  # several: llama-server's batch of prompts
        out = []
        for i, part in enumerate(prompt):
            if isinstance(part, str):
                out += model.tokenize(part, add_special=i == 0)
            elif isinstance(part, int) and not isinstance(part, bool) and 0 <= part < model.n_vocab:
                out.append(part)
            else:
                raise ApiError(400, f"'prompt'[{i}] must be text or a token id below {model.n_vocab}",
                               param="prompt")  # fmt: skip
        return out
    raise ApiError(400, "'prompt' must be non-empty text, a list of token ids, or one of those in a "
                   "list (send one prompt per request)", param="prompt")  # fmt: skip


def _stop(stop) -> list[str]:
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise ApiError(400, f"'stop' must be a list of up to {MAX_STOP} non-empty strings", param="stop")
    return stop


def _bias(raw, model) -> dict:
    """OpenAI's object form, or llama-server's ``[[token id or text, bias or false], ...]``."""
    if not isinstance(raw, list):
        return logit_bias({"logit_bias": raw})
    out = {}
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, str))
                and (pair[1] is False or _is_number(pair[1]))):  # fmt: skip
            raise ApiError(400, "'logit_bias' must be pairs of [token id or text, bias or false]",
                           param="logit_bias")  # fmt: skip
        key, value = pair
        ids = model.tokenize(key, add_special=False) if isinstance(key, str) else [key]
        for t in ids:
            if not 0 <= t < model.n_vocab:
                raise ApiError(
                    400, f"'logit_bias' names token {t}, not in the vocabulary", param="logit_bias"
                )
            out[t] = float("-inf") if value is False else float(value)
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def settings_of(sampling, max_tokens: int, stop: list, stream: bool, n_probs: int) -> dict:
    """A request's ``generation_settings`` in llama-server's names."""
    s = sampling
    return {"n_predict": max_tokens, "seed": s.seed, "temperature": s.temp, "top_k": s.top_k,
            "top_p": s.top_p, "min_p": s.min_p, "repeat_penalty": s.repeat_penalty,
            "repeat_last_n": s.repeat_last_n,
            "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
            "stop": stop, "n_probs": n_probs, "stream": stream, "max_tokens": max_tokens,
            **{k: v for k, v in OFF.items() if k not in ("n_cmpl", "n_indent")}}  # fmt: skip


def completion(app, h, body) -> None:
    from .native_answer import answer

    w = app.ready()
    req = parse(body, app.defaults, app.default_max, w.engine.model)
    answer(app, h, w, req)
