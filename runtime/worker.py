"""The model worker: loads the model in the background and runs jobs one at a time.

HTTP handler threads never touch llama.cpp's context directly: they submit a
``Job`` and read its events (text pieces, then the final stats) from a queue.
Jobs wait in FIFO order; ``status()`` tells how many are waiting. A job whose
client went away is cancelled and stops within a token.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from dataclasses import dataclass, field

from .chat import Formatter, generate_text
from .engine import Sampling, Stats
from .errors import RuntimeFailure
from .session import open_session

POOLING_MEAN = 1  # enum llama_pooling_type


@dataclass(eq=False)
class Job:
    kind: str  # "generate" | "embed"
    tokens: list = field(default_factory=list)  # generate: prompt tokens; embed: list of token lists
    stop: list = field(default_factory=list)
    sampling: Sampling | None = None
    max_tokens: int = -1
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stats: Stats = field(default_factory=Stats)


class Worker:
    def __init__(self, bundle, settings: dict, *, verbose: bool = False, cache_dir: str | None = None):
        self.bundle, self.settings, self.verbose, self.cache_dir = bundle, settings, verbose, cache_dir
        self.state, self.error = "loading", None
        self.ready = threading.Event()
        self.jobs: queue.Queue = queue.Queue()
        self.busy = False
        self.generated_tokens = 0  # all tokens generated so far (a counter, like llama-server's metrics)
        self.session = self.formatter = None
        self._embed_ctx = None
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def status(self) -> dict:
        return {"state": self.state, "busy": self.busy, "queued": self.jobs.qsize(), "slots": 1,
                "generated_tokens": self.generated_tokens}  # fmt: skip

    def submit(self, job: Job) -> Job:
        self.jobs.put(job)
        return job

    def stop(self) -> None:
        self.jobs.put(None)

    # -- the worker thread ------------------------------------------------------
    def _run(self) -> None:
        try:
            with open_session(self.bundle, self.settings, verbose=self.verbose,
                              cache_dir=self.cache_dir) as (session, _sampling):  # fmt: skip
                self.session = session  # requests bring their own sampling
                self.formatter = Formatter(session.model, self.settings["chat_template"][0] or None)
                self.state = "ready"
                self.ready.set()
                try:
                    self._serve()
                finally:
                    self._free_embed_ctx()
        except RuntimeFailure as e:
            self.state, self.error = "failed", str(e)
            self.ready.set()
        except Exception as e:  # keep the server answering; /health reports it
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            self.ready.set()
            print(f"error: the model worker failed: {self.error}", file=sys.stderr)

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            self.busy = True
            try:
                if job.kind == "embed":
                    job.events.put(("embeddings", [self._embed(t) for t in job.tokens]))
                else:
                    self._generate(job)
                job.events.put(("done", job.stats))
            except Exception as e:
                job.events.put(("error", e))
            finally:
                self.generated_tokens += job.stats.completion_tokens
                self.busy = False

    def _generate(self, job: Job) -> None:
        pieces = generate_text(self.session, job.tokens, job.stop, job.sampling, job.max_tokens, job.stats)
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    job.stats.finish_reason = "cancelled"
                    return
                job.events.put(("piece", piece))
        finally:
            pieces.close()

    # -- embeddings --------------------------------------------------------------
    def _embed(self, tokens: list[int]) -> list[float]:
        C, model = self.session.C, self.session.model
        ctx = self._embedding_context()
        C.llama_memory_clear(C.llama_get_memory(ctx), True)
        arr = (C.llama_token * len(tokens))(*tokens)
        if C.llama_decode(ctx, C.llama_batch_get_one(arr, len(tokens))) != 0:
            raise RuntimeFailure("llama.cpp failed to compute the embedding")
        ptr = C.llama_get_embeddings_seq(ctx, 0)
        n = C.llama_model_n_embd(model.ptr)
        vec = [float(ptr[i]) for i in range(n)]
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def _embedding_context(self):
        if self._embed_ctx is None:
            C = self.session.C
            params = C.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = self.session.n_ctx
            params.n_threads = params.n_threads_batch = self.session.n_threads
            params.embeddings = True
            params.pooling_type = POOLING_MEAN
            params.no_perf = True
            self._embed_ctx = C.llama_init_from_model(self.session.model.ptr, params)
            if not self._embed_ctx:
                raise RuntimeFailure("llama.cpp could not create an embedding context")
        return self._embed_ctx

    def _free_embed_ctx(self) -> None:
        if self._embed_ctx is not None:
            self.session.C.llama_free(self._embed_ctx)
            self._embed_ctx = None
