"""A short measured race, CPU against an integrated GPU, on this machine and this model.

An integrated GPU shares the CPU's memory bandwidth, which is what token generation is
bound by, so whether it beats the CPU depends on the chip, its driver and the model: it is
measured once (a few seconds: the model is mapped twice, a 32-token prompt and 16 tokens
on each side) and the verdict is kept in the cache, keyed by device, driver and model.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import gpu
from .model import Model, new_context

PROMPT = 32
GENERATED = 16
MARGIN = 1.1  # the GPU must be this much faster: a tie is not worth its first-use cost
FILE = "gpu-probe.json"


def tokens_per_second(files, layers: int, threads: int) -> float:
    """Generation speed with ``layers`` on the device (0: the CPU, with op offload off)."""
    model = Model(files.paths, files.offset, n_gpu_layers=layers)
    try:
        ctx = new_context(model, n_ctx=PROMPT + GENERATED + 8, n_threads=threads, n_batch=PROMPT)
        try:
            C = model.C
            token = model.tokenize(" the", add_special=False)[-1]
            prompt = (C.llama_token * PROMPT)(*([token] * PROMPT))
            if C.llama_decode(ctx, C.llama_batch_get_one(prompt, PROMPT)) != 0:
                return 0.0
            one = (C.llama_token * 1)(token)
            t0 = time.perf_counter()
            for _ in range(GENERATED):
                if C.llama_decode(ctx, C.llama_batch_get_one(one, 1)) != 0:
                    return 0.0
                C.llama_get_logits_ith(ctx, -1)  # as a real step reads them
            return GENERATED / (time.perf_counter() - t0)
        finally:
            C.llama_free(ctx)
    finally:
        model.close()


def _key(p: gpu.Plan, model_sha: str) -> str:
    return f"{p.probe['description']}|driver {p.probe['driver']}|{model_sha}"


def _load(cache: Path) -> dict:
    try:
        known = json.loads((cache / FILE).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def cached(p: gpu.Plan, model_sha: str, cache: Path) -> gpu.Plan | None:
    """``p`` decided by an earlier measurement, or None if there was none."""
    m = _load(cache).get(_key(p, model_sha))
    ok = isinstance(m, dict) and all(isinstance(m.get(k), (int, float)) for k in ("gpu", "cpu"))
    return _verdict(p, m) if ok else None


def settle(
    p: gpu.Plan, files, model_sha: str, threads: int, cache: Path, measure=tokens_per_second
) -> gpu.Plan:
    """``p`` (a plan that asks for a probe) decided by a new measurement, which is kept."""
    m = {"gpu": measure(files, gpu.ALL_LAYERS, threads), "cpu": measure(files, 0, threads)}
    known = _load(cache)
    known[_key(p, model_sha)] = m
    _write(cache / FILE, known)
    return _verdict(p, m)


def _verdict(p: gpu.Plan, m: dict) -> gpu.Plan:
    shown = f"{m['gpu']:.1f} against {m['cpu']:.1f} tokens/s, measured once on this machine"
    return gpu.decide(p, m["gpu"] >= MARGIN * m["cpu"], shown)


def _write(path: Path, data: dict) -> None:
    """A cache that cannot be written only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
