"""``--info``: what is inside the bundle, what hardware was found, effective settings."""

from __future__ import annotations

import json
import sys

from .. import __version__
from ..llama import backend, hardware
from ..llama.loading import choose_device, context_size, spread


def collect(bundle, settings, verbose: bool = False, cache_dir: str | None = None) -> dict:
    backend.init(verbose=verbose)
    hw = hardware.detect()
    devices = backend.devices()
    plan = choose_device(bundle, settings, cache_dir=cache_dir)
    hw["ggml"] = {
        "cpu_variant": backend.loaded_cpu_variant(),
        "cpu_features": backend.cpu_backend_features(),
        "devices": devices,
        "gpu_layers": plan.layers,
        "note": plan.note,
    }
    hw["gpu"] = {"device": plan.device, "layers": plan.layers, "why": plan.why, "vulkan": plan.devices,
                 "layer_count": (bundle.model["gguf"].get("shape") or {}).get("block_count", 0)}  # fmt: skip
    hw["rpc"] = _pool(spread(bundle, settings, plan), plan)
    return {
        "runtime": {"llamabundle": __version__, "python": sys.version.split()[0], "os": _os_name()},
        "bundle": {"path": bundle.path, "size": bundle.file_size, "payload_start": bundle.payload_start},
        "manifest": bundle.manifest,
        "hardware": hw,
        "settings": {
            k: {"value": _shown(k, settings[k]), "source": settings.source(k)} for k in sorted(settings)
        },
    }


def _pool(pooled, plan) -> dict | None:
    """Where each layer goes with --rpc: this machine first, then each worker's device."""
    if pooled is None:
        return None
    workers, split = pooled
    places = [{"device": "this machine's CPU", "memory_free": hardware.memory()["available"]}]
    places += [{"device": f"the worker at {w.endpoint}", "endpoint": w.endpoint, "memory_free": w.memory_free}
               for w in workers]  # fmt: skip
    if plan.layers:  # a local GPU holds this machine's share, after the workers'
        places.append({"device": f"this machine's {plan.name}", "memory_free": 0})
    for place, layers in zip(places, split.layers, strict=True):
        place["layers"] = layers
    return {"why": split.why, "layers": sum(split.layers), "devices": places}


def _pool_lines(pool: dict | None) -> list[str]:
    if pool is None:
        return []
    lines = [f"RPC       {pool['layers']} layers (the output layer counted) spread {pool['why']}"]
    for d in pool["devices"]:
        free = f", {_mib(d['memory_free'])} free" if d["memory_free"] else ""
        lines.append(f"  {d['layers']:>4}    layers on {d['device']}{free}")
    return lines


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def show_info(bundle, settings, *, as_json: bool, verbose: bool = False) -> int:
    info = collect(bundle, settings, verbose)
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    m, model, hw = bundle.manifest, bundle.model, info["hardware"]
    g = model["gguf"]
    cpu, ggml = hw["cpu"], hw["ggml"]
    ctx_train = g.get("context_length") or 0
    lines = [
        f"Bundle    {bundle.path} ({_mib(bundle.file_size)})",
        f"  build   llamabundle {m['build']['llamabundle']}, build id {m['build']['build_id']}",
        f"  stub    {m['stub']['os']}-{m['stub']['arch']} ({m['stub']['format']}, {_mib(m['stub']['size'])})",
        f"Model     {model['name']} ({_mib(model['size'])}, sha256 {model['sha256'][:16]}...)",
        f"  arch    {g.get('architecture', '?')}, {g.get('parameters', 0):,} parameters, "
        f"{g.get('file_type', '?')}",
        f"  context trained {ctx_train:,}; using {context_size(settings['ctx_size'], ctx_train):,}",
        f"  chat    {_chat_text(g, settings)}",
        f"  stored  {_storage_text(model)}",
        f"CPU       {cpu['model'] or cpu['arch']} ({cpu['physical_cores']} cores, "
        f"{cpu['logical_cores']} threads)",
        f"  flags   {' '.join(cpu['flags']) or 'unknown'}",
        f"  ggml    variant {ggml['cpu_variant'] or 'unknown'} "
        f"({', '.join(k for k, v in ggml['cpu_features'].items() if v == '1') or 'baseline'})",
        f"Memory    {_mib(hw['memory']['total'])} total, {_mib(hw['memory']['available'])} available",
        f"GPU       CUDA: {_gpu_text(hw['cuda'])}; Metal: {'yes' if hw['metal']['present'] else 'no'}",
        *[
            f"  vulkan  {d['description']} ({d['type']}, {_mib(d['memory'])}): "
            f"{'usable' if d['usable'] else d['why']}"
            for d in hw["gpu"]["vulkan"]
        ],
        f"  using   {_placement(hw['gpu'])}",
        *_pool_lines(hw["rpc"]),
        "Settings",
    ]
    width = max(len(k) for k in settings)
    for key in sorted(settings):
        lines.append(f"  {key:<{width}}  {_shown(key, settings[key])!r:<12} ({settings.source(key)})")
    print("\n".join(lines))
    return 0


def _shown(key: str, value):
    return "(set)" if key == "api_key" and value else value


def _chat_text(g: dict, settings) -> str:
    value, source = settings["chat_template"], settings.source("chat_template")
    if value:
        return f"template from the {source} settings" if "{" in value else f"format {value!r} ({source})"
    return "template included" if g.get("chat_template") else "no chat template (plain completion style)"


def _storage_text(model: dict) -> str:
    if model["storage"] == "zstd":
        return f"zstd-compressed ({_mib(model['stored_size'])}), unpacked once into the cache"
    if model["storage"] == "split":
        return f"in {len(model['parts'])} parts beside the executable"
    return "embedded, mapped in place"


def _placement(g: dict) -> str:
    if not g["layers"]:
        return f"the CPU ({g['why']})"
    total = g["layer_count"]
    n = min(g["layers"], total + 1) if total else g["layers"]  # llama.cpp counts the output layer too
    return f"{g['device']}, {n}{f' of {total + 1}' if total else ''} layers ({g['why']})"


def _gpu_text(cuda: dict) -> str:
    if cuda.get("present"):
        return f"driver {cuda['driver_version']}, " + ", ".join(cuda["devices"])
    return cuda.get("error", "no driver")


def _os_name() -> str:
    """The OS this runtime runs on, named as ``llamabundle build --os`` names it."""
    return {"win32": "windows", "darwin": "macos"}.get(sys.platform, sys.platform)
