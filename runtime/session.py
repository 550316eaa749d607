"""From a checked bundle and effective settings to a ready llama.cpp session."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

from . import backend, hardware, source
from .engine import Model, Sampling, Session
from .memory import DEFAULT_CTX, plan_context
from .progress import Progress

LOAD_BAR_FROM = 256 << 20  # models smaller than this load too fast for a progress bar


def gpu_plan(requested: int, source: str, hw: dict, devices: list[dict]) -> tuple[int, str | None]:
    """Layers to offload, and a one-line note when a GPU was wanted but cannot be used."""
    gpus = [d for d in devices if d["type"] in ("gpu", "igpu")]
    if gpus:
        return (requested if requested >= 0 else 999), None
    drivers = [n for n, key in (("CUDA", "cuda"), ("Metal", "metal")) if hw[key]["present"]]
    if drivers:
        return 0, (
            f"{' and '.join(drivers)} found, but this bundle has no {drivers[0]} backend for it; "
            "running on the CPU"
        )
    if requested > 0 and source != "default":
        return 0, "no GPU found; running on the CPU"
    return 0, None


def context_size(requested: int, n_ctx_train: int) -> int:
    """The context size to show before memory is looked at."""
    if requested > 0:
        return requested
    return min(n_ctx_train, DEFAULT_CTX) if n_ctx_train > 0 else DEFAULT_CTX


def sampling_from(value: dict) -> Sampling:
    """The sampling part of the effective settings."""
    keys = ("temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed")
    return Sampling(**{k: value[k] for k in keys})


@dataclass(frozen=True)
class Loaded:
    """A loaded model and the context to make for it, for callers that make their own
    (the server's batch engine): a context is 40 ms on a 0.5B model, not made twice."""

    model: Model
    n_ctx: int
    n_threads: int


@contextmanager
def open_session(bundle, settings: dict, *, verbose: bool = False, cache_dir: str | None = None,
                 context: bool = True):  # fmt: skip
    """Yield (Session, Sampling) for ``bundle``, or (Loaded, Sampling) without ``context``;
    the model is freed on exit."""
    value = {k: v for k, (v, _) in settings.items()}
    n_ctx = plan_context(bundle.model, value["ctx_size"])  # refuse now, not by the OOM killer
    files = source.locate(bundle, cache_dir)
    backend.init(verbose=verbose)
    hw = {"cuda": hardware.cuda(), "metal": hardware.metal()}
    layers, note = gpu_plan(value["gpu_layers"], settings["gpu_layers"][1], hw, backend.devices())
    if note:
        print(note, file=sys.stderr)
    size = bundle.model["size"]
    with Progress("Loading the model", size) as bar:
        shown = [0]

        def on_progress(fraction: float) -> None:
            done = int(fraction * size)
            bar(done - shown[0])
            shown[0] = done

        watch = on_progress if size > LOAD_BAR_FROM and bar.enabled else None
        model = Model(files.paths, files.offset, n_gpu_layers=layers, progress=watch)
    session = None
    try:
        threads = value["threads"] or hardware.physical_cores()
        if not context:
            yield Loaded(model, n_ctx, threads), sampling_from(value)
            return
        session = Session(model, n_ctx=n_ctx, n_threads=threads)
        yield session, sampling_from(value)
    finally:
        if session is not None:
            session.close()
        model.close()
