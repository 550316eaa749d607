"""What each HTTP route does. ``server.py`` does the HTTP plumbing, ``api.py``
checks requests and shapes responses, and ``worker.py`` runs the model."""

from __future__ import annotations

import itertools
import queue
import threading
from pathlib import Path

from ..errors import ContextError, UsageError, check_prompt
from ..llama.job import Job, Sampling
from ..llama.loading import context_size
from . import api

WAIT_POLL = 0.25  # seconds between checks that a waiting client is still there


class ClientGone(Exception):
    pass


class App:
    def __init__(self, bundle, settings, worker, *, verbose, loopback_only, static):
        self.bundle, self.worker, self.verbose, self.static = bundle, worker, verbose, static
        self.loopback_only = loopback_only
        self.api_key = settings["api_key"]
        self.system_prompt = settings["system"]
        self.defaults, self.default_max = Sampling.from_settings(settings), settings["n_predict"]
        stem = Path(bundle.model["name"]).stem
        self.model_id = settings["name"] or stem
        self.model_ids = (self.model_id, stem, bundle.model["name"])
        self.greeting = settings["greeting"]
        self.has_template = bool(settings["chat_template"] or bundle.model["gguf"].get("chat_template"))
        self.fingerprint = f"llamabundle-{bundle.manifest['build']['build_id']}"
        self.planned_ctx = context_size(settings["ctx_size"], bundle.model["gguf"].get("context_length", 0))
        self.active: set = set()
        self.lock = threading.Lock()
        self.table = {
            ("GET", "/health"): self.health,
            ("GET", "/props"): self.props,
            ("GET", "/v1/models"): self.models,
            ("POST", "/v1/chat/completions"): self.chat,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/v1/embeddings"): self.embeddings,
        }

    def route(self, method: str, path: str):
        if method == "HEAD":
            method = "GET"
        handler = self.table.get((method, path.rstrip("/") or "/"))
        if handler:
            return handler
        if any(p == path for _, p in self.table):
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
        return h.send_json(200, {"status": "ok", **w.status()})

    def props(self, h, body):
        engine = self.worker.engine
        h.send_json(200, {
            "model": self.model_id,
            "n_ctx": engine.n_ctx if engine else self.planned_ctx,
            "system_prompt": self.system_prompt,
            "chat_template": self.has_template,
            "greeting": self.greeting,
            "api_key_required": bool(self.api_key),
            "ready": self.worker.state == "ready",
        })  # fmt: skip

    def models(self, h, body):
        created = self.bundle.manifest["build"].get("source_date_epoch") or 0
        h.send_json(200, {"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": created, "owned_by": "llamabundle"}
        ]})  # fmt: skip

    # -- generation -----------------------------------------------------------------
    def chat(self, h, body):
        api.check_model(body, self.model_ids)
        self._generate(h, api.chat_request(body, self.defaults, self.default_max), chat=True)

    def completions(self, h, body):
        api.check_model(body, self.model_ids)
        self._generate(h, api.completion_request(body, self.defaults, self.default_max), chat=False)

    def _ready(self):
        w = self.worker
        if w.state == "loading":
            raise api.ApiError(503, "the model is still loading; retry when /health says ok",
                               "server_error", "model_loading")  # fmt: skip
        if w.state == "failed":
            raise api.ApiError(500, f"the model failed to load: {w.error}", "server_error")
        return w

    def _tokens(self, w, text: str, add_special: bool, param: str) -> list[int]:
        tokens = w.engine.model.tokenize(text, add_special=add_special)
        try:
            check_prompt(len(tokens), w.engine.n_ctx)
        except ContextError as e:
            raise api.ApiError(400, str(e), code="context_length_exceeded", param=param) from None
        return tokens

    def _run(self, h, job: Job):
        """Submit ``job`` and yield its events; cancel it if the client goes away."""
        with self.lock:
            self.active.add(job)
        self.worker.submit(job)
        try:
            while True:
                try:
                    event = job.events.get(timeout=WAIT_POLL)
                except queue.Empty:
                    if h.client_gone():
                        raise ClientGone from None
                    continue
                if event[0] == "error":
                    if isinstance(event[1], UsageError):
                        raise api.ApiError(400, str(event[1]))
                    raise api.ApiError(500, f"generation failed: {event[1]}", "server_error")
                yield event
                if event[0] == "done":
                    return
        finally:
            job.cancelled.set()
            with self.lock:
                self.active.discard(job)

    def _generate(self, h, req: api.GenRequest, chat: bool):
        w = self._ready()
        if chat:
            try:
                prompt = w.formatter.render(req.messages)
            except UsageError as e:  # the template refused the conversation
                raise api.ApiError(400, str(e)) from None
            text, add_special, stop = prompt.text, prompt.add_special, prompt.stop
        else:
            text, add_special, stop = req.prompt, True, []
        tokens = self._tokens(w, text, add_special, "messages" if chat else "prompt")
        room = w.engine.n_ctx - len(tokens)
        max_tokens = room if req.max_tokens < 0 else min(req.max_tokens, room)
        job = Job("generate", tokens, stop=stop + req.stop, sampling=req.sampling, max_tokens=max_tokens,
                  stream=req.stream)  # fmt: skip
        rid = api.new_id("chatcmpl" if chat else "cmpl")
        kind = "chat.completion" if chat else "text_completion"
        env = {"rid": rid, "model": self.model_id, "fingerprint": self.fingerprint}
        try:
            if req.stream:
                self._stream(h, job, req, chat, kind, env)
            else:
                parts = [req.prompt] if req.echo else []
                parts += [piece for tag, piece in self._run(h, job) if tag == "piece"]
                text_out, stats = "".join(parts), job.stats
                choice = ({"index": 0, "message": {"role": "assistant", "content": text_out}} if chat
                          else {"index": 0, "text": text_out})  # fmt: skip
                choice.update(logprobs=None, finish_reason=api.finish(stats))
                h.send_json(200, api.envelope(kind, env["rid"], env["model"], env["fingerprint"],
                                              choices=[choice], usage=api.usage(stats),
                                              timings=api.timings(stats)))  # fmt: skip
        except ClientGone:
            h.close_connection = True

    def _stream(self, h, job, req, chat, kind, env):
        kind += ".chunk" if chat else ""

        def chunk(delta=None, text=None, finish=None, **extra):
            c = {"index": 0, "logprobs": None, "finish_reason": finish}
            c.update({"delta": delta or {}} if chat else {"text": text or ""})
            return api.envelope(kind, env["rid"], env["model"], env["fingerprint"], choices=[c], **extra)

        events = self._run(h, job)
        first = next(events)  # an error before any output still gets a proper status code
        h.start_events()
        try:
            if chat:
                h.send_event(chunk({"role": "assistant", "content": ""}))
            elif req.echo:
                h.send_event(chunk(text=req.prompt))
            for tag, value in itertools.chain([first], events):
                if tag == "piece":
                    h.send_event(chunk({"content": value}, value))
            stats = job.stats
            h.send_event(chunk(finish=api.finish(stats), timings=api.timings(stats)))
            if req.include_usage:
                h.send_event(api.envelope(kind, env["rid"], env["model"], env["fingerprint"], choices=[],
                                          usage=api.usage(stats), timings=api.timings(stats)))  # fmt: skip
            h.send_event("[DONE]")
        except api.ApiError as e:
            h.send_event(e.body())
        except (BrokenPipeError, ConnectionResetError, ClientGone):
            job.cancelled.set()
        finally:
            events.close()

    # -- embeddings -----------------------------------------------------------------
    def embeddings(self, h, body):
        api.check_model(body, self.model_ids)
        texts, fmt = api.embedding_inputs(body)
        w = self._ready()
        tokens = [self._tokens(w, t, True, "input") for t in texts]
        vectors = None
        try:
            for tag, value in self._run(h, Job("embed", tokens)):
                if tag == "embeddings":
                    vectors = value
        except ClientGone:
            h.close_connection = True
            return
        n = sum(len(t) for t in tokens)
        h.send_json(200, {
            "object": "list", "model": self.model_id,
            "data": [api.embedding_item(i, v, fmt) for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": n, "total_tokens": n},
        })  # fmt: skip
