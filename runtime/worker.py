"""The model worker: loads the model in the background and runs the jobs.

HTTP handler threads never touch llama.cpp's context directly: they submit a
``Job`` and read its events (text pieces, then the final stats) from a queue.
Generation jobs run together in the slots of a ``batch.BatchEngine`` (continuous
batching); a job waits, in FIFO order, only while every slot is busy, and
``status()`` tells how many wait. Embedding jobs run between two decoding steps.
A job whose client went away is cancelled and its slot freed before the next step.
"""

from __future__ import annotations

import collections
import math
import queue
import sys
import threading
from dataclasses import dataclass, field

from .batch import BatchEngine
from .chat import Formatter
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
    stream: bool = True  # False: the text comes as one piece at the end (no wake-up per token)
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stats: Stats = field(default_factory=Stats)


class Worker:
    def __init__(self, bundle, settings: dict, *, verbose: bool = False, cache_dir: str | None = None):
        self.bundle, self.settings, self.verbose, self.cache_dir = bundle, settings, verbose, cache_dir
        self.state, self.error = "loading", None
        self.ready = threading.Event()
        self.jobs: queue.Queue = queue.Queue()
        self.waiting: collections.deque = collections.deque()  # generation jobs waiting for a slot
        self.n_slots = settings["parallel"][0]
        self.engine = self.formatter = None  # the BatchEngine, once loaded
        self._embedding = False
        self._embed_ctx = None
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def status(self) -> dict:
        engine = self.engine
        busy = bool(engine and engine.active) or self._embedding
        generated = engine.generated_tokens if engine else 0
        return {"state": self.state, "busy": busy, "queued": len(self.waiting) + self.jobs.qsize(),
                "slots": self.n_slots, "generated_tokens": generated}  # fmt: skip

    def submit(self, job: Job) -> Job:
        self.jobs.put(job)
        return job

    def stop(self) -> None:
        self.jobs.put(None)

    # -- the worker thread ------------------------------------------------------
    def _run(self) -> None:
        engine = None
        try:
            with open_session(self.bundle, self.settings, verbose=self.verbose, cache_dir=self.cache_dir,
                              context=False) as (loaded, _sampling):  # fmt: skip
                # The server decodes in its own context, one sequence per slot (requests bring
                # their own sampling).
                engine = BatchEngine(loaded.model, n_ctx=loaded.n_ctx, n_threads=loaded.n_threads,
                                     n_slots=self.n_slots)  # fmt: skip
                self.formatter = Formatter(loaded.model, self.settings["chat_template"][0] or None)
                self.engine = engine
                self.state = "ready"
                self.ready.set()
                try:
                    self._serve(engine)
                finally:
                    engine.close()
                    self._free_embed_ctx()
        except RuntimeFailure as e:
            self.state, self.error = "failed", str(e)
            self.ready.set()
        except Exception as e:  # keep the server answering; /health reports it
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            self.ready.set()
            print(f"error: the model worker failed: {self.error}", file=sys.stderr)

    def _serve(self, engine: BatchEngine) -> None:
        while True:
            # Wait for work only when there is nothing to decode; else take what came.
            block = not engine.active and not self.waiting
            while True:
                try:
                    job = self.jobs.get(block=block)
                except queue.Empty:
                    break
                if job is None:
                    return
                if job.kind == "embed":
                    self._run_embed(job)
                else:
                    self.waiting.append(job)
                block = False
            if any(job.cancelled.is_set() for job in self.waiting):  # their clients left
                self.waiting = collections.deque(job for job in self.waiting if not job.cancelled.is_set())
            while self.waiting and engine.has_idle():
                job = self.waiting[0]
                try:
                    engine.add(job)
                except Exception as e:
                    job.events.put(("error", e))
                self.waiting.popleft()  # only now: status() never misses it
            try:
                engine.step()
            except Exception as e:  # a bug of ours: the running jobs fail, the server goes on
                engine.fail_all(e)

    def _run_embed(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        self._embedding = True
        try:
            job.events.put(("embeddings", [self._embed(t) for t in job.tokens]))
            job.events.put(("done", job.stats))
        except Exception as e:
            job.events.put(("error", e))
        finally:
            self._embedding = False

    # -- embeddings --------------------------------------------------------------
    def _embed(self, tokens: list[int]) -> list[float]:
        C, model = self.engine.C, self.engine.model
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
            C = self.engine.C
            params = C.llama_context_default_params()
            params.n_ctx = params.n_batch = params.n_ubatch = self.engine.n_ctx
            params.n_threads = params.n_threads_batch = self.engine.n_threads
            params.embeddings = True
            params.pooling_type = POOLING_MEAN
            params.no_perf = True
            self._embed_ctx = C.llama_init_from_model(self.engine.model.ptr, params)
            if not self._embed_ctx:
                raise RuntimeFailure("llama.cpp could not create an embedding context")
        return self._embed_ctx

    def _free_embed_ctx(self) -> None:
        if self._embed_ctx is not None:
            self.engine.C.llama_free(self._embed_ctx)
            self._embed_ctx = None
