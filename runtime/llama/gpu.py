"""Where the model runs: which GPU, how many layers, and why, in words a user can act on.

By default (``--gpu auto``) a bundle never runs slower than on the CPU:

- a discrete GPU with room for the model gets every layer;
- a CPU-type Vulkan device (Mesa's llvmpipe/lavapipe, SwiftShader) is never picked: it is
  the CPU again, behind a slower path;
- an integrated or virtual GPU shares the CPU's memory and is often no faster, so it is
  used only when a short measured probe on this machine says it is (``gpu_probe.py``),
  cached per device, driver and model;
- on the CPU path no work goes to a device (llama.cpp's op offload is off).

``--gpu vulkan`` insists: no usable Vulkan device is an error, not a fallback.
``--gpu cpu`` skips the GPU. ggml's own fallback is silent; ``note`` says why instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ResourceError
from .vulkan import Report

MODES = ("auto", "vulkan", "cpu")
FIT = 0.9  # the share of a device's memory the model's weights may take
ALL_LAYERS = 999


@dataclass
class Plan:
    layers: int  # layers offloaded (0: the CPU)
    device: str | None  # the ggml device used ("Vulkan0"), None for the CPU
    why: str  # the reason, shown by --info
    note: str | None = None  # one line for stderr when a GPU was there but not used
    devices: list = field(default_factory=list)  # [{name, description, type, memory, usable, why}]
    probe: object = None  # (ggml device, Vulkan device) to measure before deciding, or None

    @property
    def name(self) -> str:
        """The device used, as its driver names it ("CPU" for the CPU)."""
        if not self.layers:
            return "CPU"
        return next(
            (d["description"] for d in self.devices if d["ggml"] == self.device), self.device or "GPU"
        )


def plan(mode: str, layers: int, layers_given: bool, report: Report | None, ggml_devices: list[dict],
         model_bytes: int, gpu_hint: bool = False) -> Plan:  # fmt: skip
    """``report``: the Vulkan probe, or None when the bundle has no Vulkan module;
    ``gpu_hint``: the machine shows a GPU outside Vulkan (a DRM display device, CUDA)."""
    listed = _devices(report, ggml_devices, model_bytes)
    usable = [d for d in listed if d["usable"]]

    def cpu(why: str, tell: bool) -> Plan:
        # Said once on stderr only when there is something the user could fix or expect.
        note = f"running on the CPU: {why}" if tell else None
        return Plan(0, None, why, note, listed)

    if mode == "cpu":
        return cpu("--gpu cpu", False)
    if layers == 0 and layers_given:
        return cpu("-ngl 0", False)
    native = [d for d in ggml_devices if d["type"] in ("gpu", "igpu") and not _is_vulkan(d)]
    if native and mode == "auto":  # Metal on a Mac (unified memory, always worth it), CUDA
        d = native[0]
        return Plan(layers if layers >= 0 else ALL_LAYERS, d["name"], f"{d['description']} ({d['backend']})",
                    None, listed)  # fmt: skip
    if report is None:
        why = "this bundle has no GPU module"
        return _insist(mode, why) or cpu(why, layers_given)
    if report.error:
        return _insist(mode, report.error) or cpu(report.error, layers_given or gpu_hint)
    if mode == "vulkan":
        chosen = usable or [d for d in listed if d["ggml"] and d["type"] == "cpu"]  # insisted on
        if not chosen:
            raise ResourceError(f"--gpu vulkan: no Vulkan device can run the model ({_summary(listed)})")
        d = chosen[0]
        return Plan(layers if layers >= 0 else ALL_LAYERS, d["ggml"], f"--gpu vulkan: {d['description']}",
                    None, listed)  # fmt: skip
    for d in usable:
        if d["type"] == "discrete":
            why = f"{d['description']} (discrete GPU)"
            return Plan(layers if layers >= 0 else ALL_LAYERS, d["ggml"], why, None, listed)
    if usable:  # integrated or virtual: measured, not assumed
        d = usable[0]
        return Plan(0, None, f"{d['description']}: to be measured", None, listed, probe=d)
    why = _summary(listed)
    real = any(d["type"] not in ("cpu",) for d in listed)
    return cpu(why, layers_given or real or gpu_hint)


def _insist(mode: str, why: str) -> None:
    if mode == "vulkan":
        raise ResourceError(f"--gpu vulkan: {why}")


def _devices(report: Report | None, ggml_devices: list[dict], model_bytes: int) -> list[dict]:
    """Each Vulkan device the driver lists, matched to ggml's (by name), with whether it can
    take the model and why not."""
    ggml = {d["description"]: d for d in ggml_devices if _is_vulkan(d)}
    out = []
    for v in report.devices if report else []:
        g = ggml.get(v.name)
        memory = (g["memory_free"] if g and g["memory_free"] else v.memory) or 0
        why = None
        if v.type == "cpu":
            why = "a CPU renderer, slower than the CPU itself"
        elif g is None:
            why = "ggml's Vulkan backend cannot use it"
        elif model_bytes > FIT * memory:
            why = (
                f"too small for the model ({memory >> 20} MiB free, the model needs {model_bytes >> 20} MiB)"
            )
        out.append({"description": v.name, "type": v.type, "ggml": g["name"] if g else None, "memory": memory,
                    "driver": v.driver_version, "usable": why is None, "why": why})  # fmt: skip
    return out


def _is_vulkan(d: dict) -> bool:
    return d["backend"].lower().startswith("vulkan")


def _summary(listed: list[dict]) -> str:
    if not listed:
        return "no Vulkan device found"
    return "; ".join(f"{d['description']} is {d['why']}" for d in listed if d["why"]) or "no usable device"


def decide(p: Plan, gpu_faster: bool, measured: str) -> Plan:
    """A probed plan settled by the measurement: the GPU if it was faster, else the CPU."""
    d = p.probe
    if gpu_faster:
        return Plan(
            ALL_LAYERS, d["ggml"], f"{d['description']}: faster than the CPU ({measured})", None, p.devices
        )
    return Plan(0, None, f"{d['description']} is slower than the CPU ({measured})", None, p.devices)
