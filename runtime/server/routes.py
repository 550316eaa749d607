"""What each HTTP route does. ``server.py`` does the HTTP plumbing, ``api.py``
checks requests and shapes responses, and ``worker.py`` runs the model."""

from __future__ import annotations

import functools
import queue
import threading
from pathlib import Path

from ..errors import ContextError, PeerError, UsageError, check_prompt
from ..llama.job import Job, Sampling
from ..llama.loading import context_size
from . import anthropic, api, generate, native, responses, shapes
from .cors import CorsPolicy
from .metrics import Metrics

WAIT_POLL = 0.25  # seconds between checks that a waiting client is still there


class ClientGone(Exception):
    pass


class _Tagged:
    """A job's event queue that is one of several feeding one reader (``n`` choices)."""

    def __init__(self, shared: queue.Queue, index: int):
        self.shared, self.index = shared, index

    def put(self, event) -> None:
        self.shared.put((self.index, event))


# llama-server's paths (native and OpenAI-style, with and without /v1), Anthropic's
# Messages API and OpenAI's Responses API: one engine answers them all. A handler is an
# App method's name or a function of (app, handler, body).
ROUTES = {
    ("GET", "/health"): "health",
    ("GET", "/v1/health"): "health",
    ("GET", "/props"): native.props,
    ("GET", "/slots"): native.slots,
    ("GET", "/metrics"): native.metrics,
    ("GET", "/v1/models"): "models",
    ("GET", "/models"): "models",
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/chat/completions"): "chat",
    ("POST", "/v1/completions"): "completions",
    ("POST", "/completion"): native.completion,
    ("POST", "/completions"): native.completion,
    ("POST", "/v1/embeddings"): "embeddings",
    ("POST", "/embedding"): native.embeddings,
    ("POST", "/embeddings"): native.embeddings,
    ("POST", "/tokenize"): "tokenize",
    ("POST", "/detokenize"): "detokenize",
    ("POST", "/apply-template"): native.apply_template,
    ("POST", "/v1/messages"): anthropic.messages,
    ("POST", "/v1/messages/count_tokens"): anthropic.count_tokens,
    ("POST", "/v1/responses"): responses.create,
}


class App:
    def __init__(self, bundle, settings, worker, *, verbose, loopback_only, static):
        self.bundle, self.worker, self.verbose, self.static = bundle, worker, verbose, static
        self.loopback_only = loopback_only
        self.api_key = settings["api_key"]
        self.cors = CorsPolicy(settings["cors_origins"])
        self.metrics = Metrics()
        self.settings = settings
        self.system_prompt = settings["system"]
        self.defaults, self.default_max = Sampling.from_settings(settings), settings["n_predict"]
        stem = Path(bundle.model["name"]).stem
        self.model_id = settings["name"] or stem
        self.greeting = settings["greeting"]
        self.has_template = bool(settings["chat_template"] or bundle.model["gguf"].get("chat_template"))
        self.fingerprint = f"llamabundle-{bundle.manifest['build']['build_id']}"
        self.planned_ctx = context_size(settings["ctx_size"], bundle.model["gguf"].get("context_length", 0))
        self.active: set = set()
        self.lock = threading.Lock()

    def route(self, method: str, path: str):
        if method == "HEAD":
            method = "GET"
        handler = ROUTES.get((method, path.rstrip("/") or "/"))
        if handler:
            return getattr(self, handler) if isinstance(handler, str) else functools.partial(handler, self)
        if any(p == path for _, p in ROUTES):
            raise api.ApiError(405, f"{method} is not allowed on {path}")
        raise api.ApiError(404, f"unknown route {method} {path}", code="not_found")

    def cancel_all(self) -> None:
        with self.lock:
            for job in self.active:
                job.cancelled.set()

    # -- simple routes ----------------------------------------------------------------
    def health(self, h, body):
        w = self.worker
        if w.state == "loading":
            return h.send_json(503, {"status": "loading"})
        if w.state == "failed":
            return h.send_json(500, {"status": "error", "error": w.error})
        if w.engine is not None and w.engine.broken is not None:  # an RPC worker went away
            return h.send_json(503, {"status": "error", "error": str(w.engine.broken)})
        return h.send_json(200, {"status": "ok", **w.status()})

    def tokenize(self, h, body):
        """llama-server's ``/tokenize``: ``{"content", "add_special"?, "with_pieces"?}``."""
        api.check_fields(body, {"content", "add_special", "parse_special", "with_pieces"})
        if not isinstance(body.get("content"), str):
            raise api.ApiError(400, "'content' must be a string", param="content")
        model = self.ready().engine.model
        tokens = model.tokenize(body["content"], add_special=api.boolean(body, "add_special"))
        if api.boolean(body, "with_pieces"):
            pieces = [model.piece(t, special=True) for t in tokens]
            tokens = [{"id": t, "piece": _piece(p)} for t, p in zip(tokens, pieces, strict=True)]
        h.send_json(200, {"tokens": tokens})

    def detokenize(self, h, body):
        api.check_fields(body, {"tokens"})
        tokens = body.get("tokens")
        model = self.ready().engine.model
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < model.n_vocab for t in tokens
        ):
            raise api.ApiError(
                400, f"'tokens' must be a list of token ids below {model.n_vocab}", param="tokens"
            )
        text = b"".join(model.piece(t, special=True) for t in tokens).decode("utf-8", "replace")
        h.send_json(200, {"content": text})

    def models(self, h, body):
        created = self.bundle.manifest["build"].get("source_date_epoch") or 0
        h.send_json(200, {"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": created, "owned_by": "llamabundle"}
        ]})  # fmt: skip

    # -- generation -----------------------------------------------------------------
    def chat(self, h, body):
        api.check_model(body)
        generate.chat(self, h, body)

    def completions(self, h, body):
        api.check_model(body)
        generate.completions(self, h, body)

    def ready(self):
        w = self.worker
        if w.state == "loading":
            raise api.ApiError(503, "the model is still loading; retry when /health says ok",
                               "server_error", "model_loading")  # fmt: skip
        if w.state == "failed":
            raise api.ApiError(500, f"the model failed to load: {w.error}", "server_error")
        return w

    def tokens(self, w, text: str, add_special: bool, param: str) -> list[int]:
        tokens = w.engine.model.tokenize(text, add_special=add_special)
        try:
            check_prompt(len(tokens), w.engine.n_ctx)
        except ContextError as e:
            raise api.ApiError(400, str(e), code="context_length_exceeded", param=param) from None
        return tokens

    def run(self, h, jobs: list[Job]):
        """Submit ``jobs`` (the choices of one request) and yield (choice index, event) as they
        come; cancel them all if the client goes away. Ends when every job is done."""
        shared: queue.Queue = queue.Queue()
        for i, job in enumerate(jobs):
            job.events = _Tagged(shared, i)
        with self.lock:
            self.active.update(jobs)
        for job in jobs:
            self.worker.submit(job)
        left = len(jobs)
        try:
            while left:
                try:
                    i, event = shared.get(timeout=WAIT_POLL)
                except queue.Empty:
                    if h.client_gone():
                        raise ClientGone from None
                    continue
                if event[0] == "error":
                    if isinstance(event[1], UsageError):
                        raise api.ApiError(400, str(event[1]))
                    if isinstance(event[1], PeerError):
                        raise api.ApiError(502, str(event[1]), "server_error", code="rpc_worker_gone")
                    raise api.ApiError(500, f"generation failed: {event[1]}", "server_error")
                if event[0] == "done":
                    left -= 1
                    if jobs[i].kind == "generate":
                        self.metrics.record(event[1])
                yield i, event
        finally:
            with self.lock:
                for job in jobs:
                    job.cancelled.set()
                    self.active.discard(job)

    # -- embeddings -----------------------------------------------------------------
    def embeddings(self, h, body):
        api.check_model(body)
        texts, fmt = api.embedding_inputs(body)
        vectors, n = self.embed(h, texts)
        if vectors is not None:
            h.send_json(200, {
                "object": "list", "model": self.model_id,
                "data": [shapes.embedding_item(i, v, fmt) for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n},
            })  # fmt: skip

    def embed(self, h, texts: list[str]) -> tuple[list | None, int]:
        """Each text's pooled vector and the tokens read; (None, 0) when the client left."""
        w = self.ready()
        tokens = [self.tokens(w, t, True, "input") for t in texts]
        vectors = None
        try:
            for _, event in self.run(h, [Job("embed", tokens)]):
                if event[0] == "embeddings":
                    vectors = event[1]
        except ClientGone:
            h.close_connection = True
            return None, 0
        return vectors, sum(len(t) for t in tokens)


def _piece(raw: bytes):
    """A token's text, or its bytes when they are not UTF-8 on their own (as llama-server)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)
