"""The model worker: loads the model in the background and runs the jobs.

HTTP handler threads never touch llama.cpp's context directly: they submit a
``Job`` and read its events (text pieces, then the final stats) from a queue.
Generation jobs run together in the slots of the engine (``llama/engine.py``,
continuous batching); a job waits, in FIFO order, only while every slot is busy, and
``status()`` tells how many wait. Embedding jobs run between two decoding steps.
A job whose client went away is cancelled and its slot freed before the next step.
"""

from __future__ import annotations

import collections
import queue
import sys
import threading

from ..errors import Failure
from ..llama.embeddings import Embedder
from ..llama.engine import Engine
from ..llama.job import Job
from ..llama.loading import open_engine
from ..llama.templates import Formatter


class Worker:
    def __init__(self, bundle, settings, *, verbose: bool = False, cache_dir: str | None = None):
        self.bundle, self.settings, self.verbose, self.cache_dir = bundle, settings, verbose, cache_dir
        self.state, self.error = "loading", None
        self.ready = threading.Event()
        self.jobs: queue.Queue = queue.Queue()
        self.waiting: collections.deque = collections.deque()  # generation jobs waiting for a slot
        self.n_slots = settings["parallel"]
        self.engine = self.formatter = None  # the Engine, once loaded
        self._embedding = False
        self._embedder = None
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def status(self) -> dict:
        engine = self.engine
        busy = bool(engine and engine.active) or self._embedding
        generated = engine.generated_tokens if engine else 0
        return {"state": self.state, "busy": busy, "queued": len(self.waiting) + self.jobs.qsize(),
                "slots": self.n_slots, "generated_tokens": generated, **self.device()}  # fmt: skip

    def device(self) -> dict:
        """Where the model runs, for /health, /props and the page: "CPU" or the GPU's name."""
        plan = getattr(self.engine, "placement", None)
        if plan is None:
            return {}
        out = {"device": plan.name, "device_why": plan.why, "gpu_layers": plan.layers}
        if self.engine.pool is not None:  # with --rpc: this machine's layers, then each worker's
            workers, split = self.engine.pool
            out["rpc"] = {"workers": [w.endpoint for w in workers], "layers": split.layers}
            out["device"] += f" + {len(workers)} RPC worker{'s' if len(workers) > 1 else ''}"
        return out

    def submit(self, job: Job) -> Job:
        self.jobs.put(job)
        return job

    def stop(self) -> None:
        self.jobs.put(None)

    # -- the worker thread ------------------------------------------------------
    def _run(self) -> None:
        try:
            with open_engine(self.bundle, self.settings, n_slots=self.n_slots, verbose=self.verbose,
                             cache_dir=self.cache_dir) as engine:  # fmt: skip
                self.formatter = Formatter(engine.model, self.settings["chat_template"] or None)
                self.engine = engine
                self.state = "ready"
                self.ready.set()
                try:
                    self._serve(engine)
                finally:
                    if self._embedder is not None:
                        self._embedder.close()
        except Failure as e:
            self.state, self.error = "failed", str(e)
            self.ready.set()
        except Exception as e:  # keep the server answering; /health reports it
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            self.ready.set()
            print(f"error: the model worker failed: {self.error}", file=sys.stderr)

    def _serve(self, engine: Engine) -> None:
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
            if self._embedder is None:  # made on first use: most servers never embed
                self._embedder = Embedder(self.engine)
            job.events.put(("embeddings", [self._embedder.embed(t) for t in job.tokens]))
            job.events.put(("done", job.stats))
        except Exception as e:
            job.events.put(("error", e))
        finally:
            self._embedding = False
