"""llama-server's own routes, in its shapes, so its clients work unchanged: ``/props``,
``/slots``, ``/metrics``, ``/apply-template`` and the native ``/embedding(s)``. Its
``/completion`` is in ``native_completion.py``."""

from __future__ import annotations

from .. import __version__
from . import api, generate
from .chat_api import chat_request
from .native_completion import completion, settings_of

__all__ = ["apply_template", "completion", "embeddings", "metrics", "props", "slots"]


def props(app, h, body) -> None:
    """llama-server's /props, plus what the web page reads (model, greeting, ...)."""
    w = app.worker
    engine, formatter = w.engine, w.formatter
    n_ctx = engine.n_ctx if engine else app.planned_ctx
    template = formatter.template if formatter else app.settings["chat_template"]
    out = {
        "default_generation_settings": _slot(0, n_ctx, None, app),
        "total_slots": w.n_slots,
        "model_path": app.bundle.model["name"],
        "model_alias": app.model_id,
        "modalities": {"vision": False, "video": False, "audio": False},
        "endpoint_slots": True,
        "endpoint_props": False,  # llama-server's POST /props (changing settings): not here
        "endpoint_metrics": True,
        "is_sleeping": False,
        "chat_template": template or "",
        "build_info": f"llamabundle {__version__}",
        # The web page's own fields.
        "model": app.model_id,
        "n_ctx": n_ctx,
        "system_prompt": app.system_prompt,
        "plain_chat": not app.has_template,
        "greeting": app.greeting,
        "api_key_required": bool(app.api_key),
        "ready": w.state == "ready",
        **w.device(),
    }
    if engine:
        out["bos_token"], out["eos_token"] = _special_text(engine.model)
    h.send_json(200, out)


def _special_text(model) -> tuple[str, str]:
    C, vocab = model.C, model.vocab
    bos, eos = C.llama_vocab_bos(vocab), C.llama_vocab_eos(vocab)
    return (model.token_text(bos) if bos >= 0 else "", model.token_text(eos) if eos >= 0 else "")


def slots(app, h, body) -> None:
    """llama-server's /slots: what each slot is doing."""
    engine = app.ready().engine
    h.send_json(200, [_slot(i, engine.n_ctx, s, app) for i, s in enumerate(engine.slots)])


def _slot(i: int, n_ctx: int, slot, app) -> dict:
    job = slot.job if slot is not None else None  # read once: the worker may end it meanwhile
    busy = job is not None
    sampling, stop = (job.sampling, job.stop) if busy else (app.defaults, [])
    n_decoded = slot.n_gen if busy else 0
    max_tokens = job.max_tokens if busy else app.default_max
    return {
        "id": i, "id_task": -1, "n_ctx": n_ctx, "speculative": False, "is_processing": busy,
        "params": settings_of(sampling, max_tokens, stop, busy and job.stream, 0),
        "prompt": "", "next_token": {"has_next_token": busy, "has_new_line": False,
                                     "n_remain": max_tokens - n_decoded if max_tokens >= 0 else -1,
                                     "n_decoded": n_decoded, "stopping_word": ""},
    }  # fmt: skip


def metrics(app, h, body) -> None:
    data = app.metrics.render(app.worker).encode()
    h.send_response(200)
    h.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def apply_template(app, h, body) -> None:
    """llama-server's /apply-template: the prompt a chat request would run, not run."""
    w = app.ready()
    req = chat_request(body, app.defaults, app.default_max, max_n=w.n_slots)
    h.send_json(200, {"prompt": generate.prepare_chat(app, w, req).prompt})


def embeddings(app, h, body) -> None:
    """llama-server's /embedding: ``{"content": text | [texts]}`` answered as
    ``[{"index": i, "embedding": [[...]]}]`` (one pooled vector per input)."""
    texts, _ = api.embedding_inputs(body)
    vectors, _ = app.embed(h, texts)
    if vectors is not None:
        h.send_json(200, [{"index": i, "embedding": [v]} for i, v in enumerate(vectors)])
