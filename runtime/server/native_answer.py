"""The answer to llama-server's native ``/completion``, in its shape: the text, why it
stopped (``stop_type``: eos, word or limit), token counts, timings, and on request the
token ids and each token's probabilities. Streamed, each event carries a piece, and the
last one ``"stop": true`` with the totals (llama-server sends no ``[DONE]``)."""

from __future__ import annotations

from ..errors import ContextError, check_prompt
from ..llama.job import Job
from . import api, shapes
from .native_completion import settings_of


def answer(app, h, w, req) -> None:
    from .routes import ClientGone

    try:
        check_prompt(len(req.tokens), w.engine.n_ctx)
    except ContextError as e:
        raise api.ApiError(400, str(e), code="context_length_exceeded", param="prompt") from None
    room = w.engine.n_ctx - len(req.tokens)
    max_tokens = room if req.max_tokens < 0 else min(req.max_tokens, room)
    job = Job("generate", req.tokens, stop=req.stop, sampling=req.sampling, stream=req.stream,
              max_tokens=max_tokens, grammar=req.grammar, logprobs=req.n_probs or None,
              token_ids=req.return_tokens, logit_bias=req.logit_bias)  # fmt: skip
    try:
        (_stream if req.stream else _whole)(app, h, req, job)
    except ClientGone:
        h.close_connection = True


def _whole(app, h, req, job) -> None:
    text, entries = [], []
    for _, event in app.run(h, [job]):
        if event[0] == "piece":
            text.append(event[1])
            entries += event[2]
    h.send_json(200, _final(app, req, job, "".join(text), entries))


def _stream(app, h, req, job) -> None:
    events = app.run(h, [job])
    first = next(events)  # an error before any output still gets a proper status code
    h.start_events()
    try:
        for _, event in _chain(first, events):
            if event[0] == "piece" and (event[1] or event[2]):
                h.send_event({"index": 0, "content": event[1], **_token_parts(req, event[2]), "stop": False,
                              "id_slot": -1, "tokens_predicted": job.stats.completion_tokens,
                              "tokens_evaluated": len(req.tokens)})  # fmt: skip
            elif event[0] == "done":
                h.send_event(_final(app, req, job, "", []))
    except api.ApiError as e:
        h.send_event(e.body())
    except api.CLIENT_GONE:
        job.cancelled.set()
    finally:
        events.close()


def _token_parts(req, entries: list) -> dict:
    out = {"tokens": [e["id"] for e in entries] if req.return_tokens else []}
    if req.n_probs:
        out["completion_probabilities"] = entries
    return out


def _final(app, req, job, text: str, entries: list) -> dict:
    stats = job.stats
    word = stats.stop_word or ""
    stop_type = "word" if word else "limit" if stats.finish_reason == "length" else "eos"
    return {
        "index": 0, "content": text, **_token_parts(req, entries), "id_slot": -1, "stop": True,
        "model": app.model_id, "tokens_predicted": stats.completion_tokens,
        "tokens_evaluated": stats.prompt_tokens,
        "generation_settings": settings_of(req.sampling, req.max_tokens, req.stop, req.stream, req.n_probs),
        "prompt": req.prompt, "has_new_line": "\n" in text, "truncated": False, "stop_type": stop_type,
        "stopping_word": word, "tokens_cached": stats.prompt_tokens + stats.completion_tokens,
        "timings": shapes.timings(stats),
    }  # fmt: skip


def _chain(first, rest):
    yield first
    yield from rest
