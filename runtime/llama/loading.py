"""From a checked bundle and the effective settings to a running engine."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from ..bundle import source
from ..progress import Progress
from . import backend, hardware
from .engine import Engine
from .memory import DEFAULT_CTX, plan_context
from .model import Model

LOAD_BAR_FROM = 256 << 20  # models smaller than this load too fast for a progress bar


def gpu_plan(requested: int, given: bool, hw: dict, devices: list[dict]) -> tuple[int, str | None]:
    """Layers to offload, and a one-line note when a GPU was wanted but cannot be used.
    ``given``: the user chose ``requested`` (not llamabundle's default)."""
    gpus = [d for d in devices if d["type"] in ("gpu", "igpu")]
    if gpus:
        return (requested if requested >= 0 else 999), None
    drivers = [n for n, key in (("CUDA", "cuda"), ("Metal", "metal")) if hw[key]["present"]]
    if drivers:
        return 0, (
            f"{' and '.join(drivers)} found, but this bundle has no {drivers[0]} backend for it; "
            "running on the CPU"
        )
    if requested > 0 and given:
        return 0, "no GPU found; running on the CPU"
    return 0, None


def context_size(requested: int, n_ctx_train: int) -> int:
    """The context size to show before memory is looked at."""
    if requested > 0:
        return requested
    return min(n_ctx_train, DEFAULT_CTX) if n_ctx_train > 0 else DEFAULT_CTX


@contextmanager
def open_engine(bundle, settings, *, n_slots: int = 1, verbose: bool = False, cache_dir: str | None = None):
    """Yield an ``Engine`` with ``n_slots`` slots for ``bundle``'s model; both are freed on exit.
    The memory check comes first: a context too large is refused now, not by the OOM killer."""
    n_ctx = plan_context(bundle.model, settings["ctx_size"])
    files = source.locate(bundle, cache_dir)
    backend.init(verbose=verbose)
    hw = {"cuda": hardware.cuda(), "metal": hardware.metal()}
    layers, note = gpu_plan(settings["gpu_layers"], settings.given("gpu_layers"), hw, backend.devices())
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
    engine = None
    try:
        threads = settings["threads"] or hardware.physical_cores()
        engine = Engine(model, n_ctx=n_ctx, n_threads=threads, n_slots=n_slots)
        yield engine
    finally:
        if engine is not None:
            engine.close()
        model.close()
