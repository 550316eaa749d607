"""What hardware the runtime found: CPU features, GPUs and memory.

Everything here is read without running model code: /proc, sysctl and the GPU
drivers' own entry points (libcuda through ctypes), so it works the same in a
bare VM, a container or an old laptop.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) that decide which ggml CPU variant can run.
CPU_FLAGS = (
    "sse3", "ssse3", "sse4_1", "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
    "amx_tile", "amx_int8",
)  # fmt: skip


def cpu() -> dict:
    import platform  # not at the top: it costs every start ~10 ms of regex compiling

    info = {
        "arch": platform.machine().lower(),
        "model": platform.processor() or "",
        "logical_cores": os.cpu_count() or 1,
        "physical_cores": physical_cores(),
        "flags": [],
    }
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not info["model"]:
            info["model"] = value.strip()
        elif key in ("flags", "Features") and not info["flags"]:
            have = set(value.split())
            if "pni" in have:  # Linux calls SSE3 "pni"
                have.add("sse3")
            info["flags"] = [f for f in CPU_FLAGS if f in have]
    if info["model"] in ("", info["arch"]):
        info["model"] = next(
            (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
            info["model"],
        )
    return info


def physical_cores() -> int:
    """Physical cores (not SMT threads) this process may use."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
    except OSError:
        pass
    n = len(cores) or allowed
    return max(1, min(n, allowed))


def _cgroup_room() -> int | None:
    """Bytes this process's memory cgroup still allows (v1 or v2), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files = (f"/sys/fs/cgroup{path}/memory.max", f"/sys/fs/cgroup{path}/memory.current")
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path}"
            files = (f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes")
        else:
            continue
        try:
            with open(files[0]) as a, open(files[1]) as b:
                limit, usage = a.read().strip(), b.read().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - int(usage))
    return None


def memory() -> dict:
    """Total and available memory in bytes (0 when unknown), within this process's cgroup."""
    out = {"total": 0, "available": 0}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out["total" if key == "MemTotal" else "available"] = int(value.split()[0]) * 1024
    except OSError:
        try:
            out["total"] = out["available"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    room = _cgroup_room()
    if room is not None:
        out["available"] = min(out["available"] or room, room)
        out["cgroup_available"] = room
    return out


def metal() -> dict:
    """Metal exists on every Apple-silicon Mac (macOS arm64)."""
    present = sys.platform == "darwin" and os.uname().machine == "arm64"
    return {"present": present}


def cuda() -> dict:
    """Ask the NVIDIA driver (not the toolkit) for its version and devices."""
    names = {"win32": ["nvcuda.dll"], "darwin": []}.get(sys.platform, ["libcuda.so.1", "libcuda.so"])
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return {"present": False, "driver": name, "error": "cuInit failed (no usable GPU)"}
            version, count = ctypes.c_int(), ctypes.c_int()
            lib.cuDriverGetVersion(ctypes.byref(version))
            lib.cuDeviceGetCount(ctypes.byref(count))
            devices = []
            for i in range(count.value):
                dev, buf = ctypes.c_int(), ctypes.create_string_buffer(256)
                if lib.cuDeviceGet(ctypes.byref(dev), i) == 0:
                    lib.cuDeviceGetName(buf, len(buf), dev)
                    devices.append(buf.value.decode(errors="replace"))
            v = version.value
            return {
                "present": count.value > 0,
                "driver_version": f"{v // 1000}.{v % 1000 // 10}",
                "devices": devices,
            }
        except AttributeError:
            return {"present": False, "driver": name, "error": "not an NVIDIA driver"}
    return {"present": False}


def detect() -> dict:
    return {
        "os": sys.platform,
        "cpu": cpu(),
        "memory": memory(),
        "metal": metal(),
        "cuda": cuda(),
    }


def gpu_hint() -> bool:
    """Whether the machine shows a display controller outside Vulkan (Linux: a DRM device
    whose PCI class is 0x03xxxx), so a GPU that Vulkan cannot reach is worth a word."""
    try:
        for card in Path("/sys/class/drm").glob("card[0-9]*"):
            if (card / "device" / "class").read_text().startswith("0x03"):
                return True
    except OSError:
        pass
    return False
