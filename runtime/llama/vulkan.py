"""What Vulkan this machine has, asked of the Vulkan loader itself (ctypes, no ggml).

ggml's Vulkan module is silent when it cannot run: no loader, no driver (ICD), or only a
CPU renderer (Mesa's llvmpipe, which ggml skips unless told). This probe finds which, so
the runtime can say in one line why there is no GPU, and it reads each device's type
(discrete, integrated, CPU), which ggml's own device list does not tell apart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from dataclasses import dataclass, field

# VkPhysicalDeviceType
TYPES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}
LOADERS = {"win32": ["vulkan-1.dll"], "darwin": ["libvulkan.1.dylib", "libMoltenVK.dylib"]}
PROPERTIES_SIZE = 1024  # VkPhysicalDeviceProperties is 824 bytes; only its head is read
MEMORY_PROPERTIES_SIZE = 520
DEVICE_LOCAL = 1
START_ERRORS = {  # vkCreateInstance's failures, in words
    -9: "no Vulkan driver (ICD) is installed",  # VK_ERROR_INCOMPATIBLE_DRIVER: none to use
    -3: "the Vulkan driver could not start (it may predate Vulkan 1.2, which ggml needs)",
    -7: "the Vulkan driver lacks an extension it needs",
}


@dataclass
class Device:
    name: str
    type: str  # discrete, integrated, virtual, cpu, other
    vendor_id: int
    driver_version: int
    api_version: str
    memory: int  # bytes of device-local memory (the largest heap)


@dataclass
class Report:
    loader: str | None = None  # the loader library found, None without one
    error: str | None = None  # why no device could be listed
    devices: list[Device] = field(default_factory=list)


class _AppInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("pApplicationName", ctypes.c_char_p),
                ("applicationVersion", ctypes.c_uint32), ("pEngineName", ctypes.c_char_p),
                ("engineVersion", ctypes.c_uint32), ("apiVersion", ctypes.c_uint32)]  # fmt: skip


class _CreateInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_int), ("pNext", ctypes.c_void_p), ("flags", ctypes.c_uint32),
                ("pApplicationInfo", ctypes.POINTER(_AppInfo)), ("enabledLayerCount", ctypes.c_uint32),
                ("ppEnabledLayerNames", ctypes.c_void_p), ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]  # fmt: skip


def _open_loader():
    names = LOADERS.get(sys.platform, ["libvulkan.so.1", "libvulkan.so"])
    for name in names:
        try:
            return name, ctypes.CDLL(name)
        except OSError:
            continue
    found = ctypes.util.find_library("vulkan")
    if found:
        try:
            return found, ctypes.CDLL(found)
        except OSError:
            pass
    return None, None


def probe() -> Report:
    name, lib = _open_loader()
    if lib is None:
        return Report(error="no Vulkan loader (libvulkan) is installed")
    report = Report(loader=name)
    vp, u32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)
    lib.vkCreateInstance.argtypes = [ctypes.POINTER(_CreateInfo), vp, ctypes.POINTER(vp)]
    lib.vkEnumeratePhysicalDevices.argtypes = [vp, u32p, ctypes.POINTER(vp)]
    lib.vkGetPhysicalDeviceProperties.argtypes = [vp, ctypes.c_char_p]
    lib.vkGetPhysicalDeviceMemoryProperties.argtypes = [vp, ctypes.c_char_p]
    lib.vkDestroyInstance.argtypes = [vp, vp]
    app = _AppInfo(0, None, b"llamabundle", 1, b"llamabundle", 1, (1 << 22) | (2 << 12))  # Vulkan 1.2
    info = _CreateInfo(1, None, 0, ctypes.pointer(app), 0, None, 0, None)
    instance = vp()
    rc = lib.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if rc != 0:
        report.error = START_ERRORS.get(rc, f"Vulkan failed to start (VkResult {rc})")
        return report
    try:
        count = ctypes.c_uint32(0)
        lib.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
        handles = (vp * count.value)()
        if count.value:
            lib.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles)
        for handle in handles[: count.value]:
            report.devices.append(_device(lib, handle))
    finally:
        lib.vkDestroyInstance(instance, None)
    if not report.devices:
        report.error = "the Vulkan driver lists no device"
    return report


def _device(lib, handle) -> Device:
    props = ctypes.create_string_buffer(PROPERTIES_SIZE)
    lib.vkGetPhysicalDeviceProperties(handle, props)
    api, driver, vendor, _dev, kind = (
        int.from_bytes(props.raw[i : i + 4], "little") for i in range(0, 20, 4)
    )
    name = props.raw[20:276].split(b"\0", 1)[0].decode("utf-8", "replace")
    mem = ctypes.create_string_buffer(MEMORY_PROPERTIES_SIZE)
    lib.vkGetPhysicalDeviceMemoryProperties(handle, mem)
    n_heaps = int.from_bytes(mem.raw[260:264], "little")
    heaps = []  # VkMemoryHeap: {VkDeviceSize size; VkMemoryHeapFlags flags;}, 16 bytes each
    for i in range(min(n_heaps, 16)):
        at = 264 + 16 * i
        heaps.append(
            (
                int.from_bytes(mem.raw[at : at + 8], "little"),
                int.from_bytes(mem.raw[at + 8 : at + 12], "little"),
            )
        )
    local = max((size for size, flags in heaps if flags & DEVICE_LOCAL), default=0)
    version = f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}"
    return Device(name, TYPES.get(kind, "other"), vendor, driver, version, local)
