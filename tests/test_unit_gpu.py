"""Where the model runs (runtime/llama/gpu.py, gpu_probe.py), decided from fake device lists."""

from __future__ import annotations

import json

import pytest

from runtime.errors import ResourceError
from runtime.llama import gpu, gpu_probe
from runtime.llama.vulkan import Device, Report

GiB = 2**30
LLVMPIPE = Device("llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", 0x10005, 1, "1.3.230", 2 * GiB)
IGPU = Device("Intel(R) UHD Graphics 620", "integrated", 0x8086, 7, "1.3.255", 4 * GiB)
DGPU = Device("AMD Radeon RX 7600", "discrete", 0x1002, 9, "1.3.260", 8 * GiB)


def ggml_dev(v: Device, i: int, free: int | None = None) -> dict:
    return {"name": f"Vulkan{i}", "description": v.name, "type": "gpu", "memory_total": v.memory,
            "memory_free": v.memory if free is None else free, "backend": "Vulkan"}  # fmt: skip


CPU = {
    "name": "CPU",
    "description": "AMD EPYC",
    "type": "cpu",
    "memory_total": 0,
    "memory_free": 0,
    "backend": "CPU",
}


def plan(mode="auto", layers=-1, given=False, report=None, ggml=(), size=100 << 20, hint=False):
    return gpu.plan(mode, layers, given, report, [CPU, *ggml], size, hint)


def test_a_discrete_gpu_gets_every_layer():
    p = plan(report=Report("libvulkan.so.1", None, [DGPU]), ggml=[ggml_dev(DGPU, 0)])
    assert (p.layers, p.device, p.note) == (gpu.ALL_LAYERS, "Vulkan0", None) and "discrete" in p.why
    p = plan(layers=10, given=True, report=Report("libvulkan.so.1", None, [DGPU]), ggml=[ggml_dev(DGPU, 0)])
    assert p.layers == 10


def test_a_cpu_renderer_is_never_picked_by_auto():
    # Even when ggml was told to see it (GGML_VK_VISIBLE_DEVICES): it is the CPU again, slower.
    report = Report("libvulkan.so.1", None, [LLVMPIPE])
    for ggml in ([], [ggml_dev(LLVMPIPE, 0)]):
        p = plan(report=report, ggml=ggml)
        assert p.layers == 0 and p.device is None and "CPU renderer" in p.why and p.note is None
    p = plan(report=report, layers=99, given=True)  # asked for layers: told why not, in one line
    why = "llvmpipe (LLVM 15.0.6, 256 bits) is a CPU renderer, slower than the CPU itself"
    assert p.note == f"running on the CPU: {why}"


def test_vulkan_insists():
    p = plan("vulkan", report=Report("libvulkan.so.1", None, [LLVMPIPE]), ggml=[ggml_dev(LLVMPIPE, 0)])
    assert (p.layers, p.device) == (gpu.ALL_LAYERS, "Vulkan0")
    no_loader = Report(None, "no Vulkan loader (libvulkan) is installed")
    for report, needle in ((None, "no GPU module"), (no_loader, "no Vulkan loader"),
                           (Report("libvulkan.so.1", None, [LLVMPIPE]), "CPU renderer")):  # fmt: skip
        with pytest.raises(ResourceError, match=needle) as e:
            plan("vulkan", report=report)
        assert str(e.value).startswith("--gpu vulkan: ") and "\n" not in str(e.value)


def test_without_a_loader_or_driver_the_cpu_runs_and_says_why_when_it_matters():
    no_loader = Report(None, "no Vulkan loader (libvulkan) is installed")
    no_icd = Report("libvulkan.so.1", "no Vulkan driver (ICD) is installed")
    for report, needle in ((no_loader, "no Vulkan loader"), (no_icd, "no Vulkan driver")):
        assert plan(report=report).note is None  # no sign of a GPU: nothing to say
        assert needle in plan(report=report, hint=True).note  # a display device Vulkan cannot reach
        assert needle in plan(report=report, layers=99, given=True).note
        assert plan(report=report).layers == 0


def test_a_device_too_small_for_the_model_is_not_used():
    small = ggml_dev(DGPU, 0, free=1 * GiB)
    p = plan(report=Report("libvulkan.so.1", None, [DGPU]), ggml=[small], size=2 * GiB)
    assert p.layers == 0 and "too small for the model" in p.note and "1024 MiB free" in p.note


def test_cpu_and_ngl_0_skip_the_gpu_silently():
    report = Report("libvulkan.so.1", None, [DGPU])
    assert plan("cpu", report=report, ggml=[ggml_dev(DGPU, 0)]).layers == 0
    assert plan(layers=0, given=True, report=report, ggml=[ggml_dev(DGPU, 0)]).note is None


def test_metal_and_cuda_devices_are_used_as_before():
    metal = {"name": "MTL0", "description": "Apple M2", "type": "gpu", "memory_total": 0, "memory_free": 0,
             "backend": "Metal"}  # fmt: skip
    p = plan(ggml=[metal])
    assert (p.layers, p.device) == (gpu.ALL_LAYERS, "MTL0")


def test_an_integrated_gpu_is_measured_once_and_the_verdict_kept(tmp_path):
    report = Report("libvulkan.so.1", None, [IGPU])
    p = plan(report=report, ggml=[ggml_dev(IGPU, 0)])
    assert p.layers == 0 and p.probe is not None and "to be measured" in p.why
    assert gpu_probe.cached(p, "sha", tmp_path) is None
    calls = []

    def measure(files, layers, threads):
        calls.append(layers)
        return 30.0 if layers else 20.0

    settled = gpu_probe.settle(p, None, "sha", 2, tmp_path, measure=measure)
    assert calls == [gpu.ALL_LAYERS, 0] and (settled.layers, settled.device) == (gpu.ALL_LAYERS, "Vulkan0")
    assert "30.0 against 20.0 tokens/s" in settled.why
    again = gpu_probe.cached(p, "sha", tmp_path)  # the next start: no measuring
    assert (again.layers, again.why) == (settled.layers, settled.why)
    assert gpu_probe.cached(p, "other-model", tmp_path) is None
    slower = gpu_probe.settle(
        p, None, "sha2", 2, tmp_path, measure=lambda f, layers, t: 21.0 if layers else 20.0
    )
    assert slower.layers == 0 and "slower than the CPU" in slower.why  # within the 10% margin: the CPU
    assert len(json.loads((tmp_path / "gpu-probe.json").read_text())) == 2
    (tmp_path / "gpu-probe.json").write_text("{broken")
    assert gpu_probe.cached(p, "sha", tmp_path) is None  # a damaged cache means measuring again
