"""From a checked bundle and the effective settings to a running engine."""

from __future__ import annotations

import contextlib
import sys
from contextlib import contextmanager

from ..bundle import source
from ..errors import UsageError
from ..progress import Progress, Waiting
from . import backend, gpu, gpu_probe, hardware, pool, rpc, vulkan
from .engine import Engine
from .memory import DEFAULT_CTX, plan_context
from .model import Model

LOAD_BAR_FROM = 256 << 20  # models smaller than this load too fast for a progress bar


def choose_device(
    bundle, settings, *, files=None, threads: int = 1, cache_dir: str | None = None
) -> gpu.Plan:
    """Where the model runs (``gpu.py``). With ``files``, an integrated GPU that has not been
    measured yet is measured now; without (``--info``), the plan says it will be."""
    mode = settings["gpu"]
    report = vulkan.probe() if mode != "cpu" and backend.has_module("vulkan") else None
    # ggml's Vulkan module is loaded only when it may be used: asked for, or a device that is
    # not a CPU renderer (which gpu.plan never picks by itself) is there.
    devices = report.devices if report is not None else []
    if devices and (mode == "vulkan" or any(d.type != "cpu" for d in devices)):
        backend.load_module("vulkan")
    hint = hardware.gpu_hint() or hardware.cuda()["present"]
    p = gpu.plan(mode, settings["gpu_layers"], settings.given("gpu_layers"), report, backend.devices(),
                 bundle.model["size"], hint)  # fmt: skip
    if p.probe is not None:
        known = gpu_probe.cached(p, bundle.model["sha256"], source.cache_root(cache_dir))
        if known is not None:
            p = known
        elif files is not None:
            print(
                f"Measuring {p.probe['description']} against the CPU (once for this model)...",
                file=sys.stderr,
            )
            p = gpu_probe.settle(p, files, bundle.model["sha256"], threads, source.cache_root(cache_dir))
    return p


def spread(bundle, settings, plan: gpu.Plan):
    """With ``--rpc``: the workers (checked and registered with ggml) and how the model's
    layers are spread over this machine and them; None without."""
    if not settings["rpc"]:
        if settings["tensor_split"]:
            raise UsageError("--tensor-split goes with --rpc: it shares the model between machines")
        return None
    workers = rpc.connect(rpc.parse_endpoints(settings["rpc"]))
    n_layer = (bundle.model["gguf"].get("shape") or {}).get("block_count", 0)
    if not n_layer:
        raise UsageError("this model does not say how many layers it has, so --rpc cannot spread it")
    local = next((d for d in plan.devices if d.get("ggml") == plan.device), None) if plan.layers else None
    if settings["tensor_split"]:
        shares = pool.parse_shares(settings["tensor_split"], 1 + len(workers))
        why = f"--tensor-split {settings['tensor_split']}"
    else:
        here = local["memory"] if local else hardware.memory()["available"]
        shares = [here, *(w.memory_free for w in workers)]
        why = "in proportion to free memory"
    return workers, pool.plan(n_layer, shares, local_is_cpu=local is None, why=why)


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
    threads = settings["threads"] or hardware.physical_cores()
    plan = choose_device(bundle, settings, files=files, threads=threads, cache_dir=cache_dir)
    if plan.note:
        print(plan.note, file=sys.stderr)
    pooled = spread(bundle, settings, plan)
    # A GPU's first use can take a while (Vulkan compiles its shaders): say so if it does.
    label = f"Preparing {plan.name} (its shaders are compiled on first use)"
    with Waiting(label) if plan.layers else contextlib.nullcontext():
        model = _load_model(bundle, files, plan.layers, pooled, plan)
        engine = None
        try:
            engine = Engine(model, n_ctx=n_ctx, n_threads=threads, n_slots=n_slots)
            engine.placement, engine.pool = plan, pooled
            if plan.layers:
                engine.warm_up()
        except BaseException:
            if engine is not None:
                engine.close()
            model.close()
            raise
    try:
        yield engine
    finally:
        engine.close()
        model.close()


def _load_model(bundle, files, layers: int, pooled=None, plan=None) -> Model:
    size = bundle.model["size"]
    with Progress("Loading the model", size) as bar:
        shown = [0]

        def on_progress(fraction: float) -> None:
            done = int(fraction * size)
            bar(done - shown[0])
            shown[0] = done

        watch = on_progress if size > LOAD_BAR_FROM and bar.enabled else None
        if pooled is None:
            return Model(files.paths, files.offset, n_gpu_layers=layers, progress=watch)
        workers, split = pooled
        devices = [w.device for w in workers]
        if plan.layers:  # a local GPU holds this machine's share, after the workers'
            devices.append(backend.ggml().ggml_backend_dev_by_name(plan.device.encode()))
        return Model(files.paths, files.offset, n_gpu_layers=split.n_gpu_layers, progress=watch,
                     devices=devices, tensor_split=split.tensor_split)  # fmt: skip
