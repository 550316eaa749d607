"""llama.cpp bindings, ggml backend loading and log routing.

We import llama-cpp-python's ctypes module (``llama_cpp.llama_cpp``) without
running the package ``__init__``, which would import the high-level ``Llama``
class and numpy: the runtime drives llama.cpp through its C API only.

With ``GGML_BACKEND_DL=ON`` no backend exists until
``ggml_backend_load_all_from_path`` is called, and it must be called on the
libggml that libllama itself links to (``llama_cpp/lib/libggml.so.0``); any other
copy has its own, separate registry.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import types
from contextlib import contextmanager
from pathlib import Path

from ..errors import ModelError

_state: dict = {}
OPTIONAL = "optional"  # the folder beside the CPU variants that holds the modules loaded on demand
_log_lines: list[str] = []
_listeners: list = []
LOG_KEEP = 200


def bindings():
    """The ``llama_cpp.llama_cpp`` ctypes module, imported without numpy."""
    if "C" not in _state:
        if "llama_cpp" not in sys.modules:
            spec = importlib.util.find_spec("llama_cpp")
            if spec is None or not spec.submodule_search_locations:
                raise ModelError("llama-cpp-python is not installed in this runtime")
            pkg = types.ModuleType("llama_cpp")
            pkg.__path__ = list(spec.submodule_search_locations)
            pkg.__file__ = spec.origin
            pkg.__spec__ = spec
            sys.modules["llama_cpp"] = pkg
        import llama_cpp.llama_cpp as C

        _state["C"] = C
    return _state["C"]


def llama_version() -> str:
    """llama-cpp-python's version (which fixes the llama.cpp it carries)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return getattr(bindings(), "__version__", "unknown")


def _lib_dir() -> Path:
    return Path(bindings().__file__).resolve().parent / "lib"


def backend_dirs() -> list[Path]:
    """Where the ggml backend modules (libggml-cpu-*.so, ...) may live, best first."""
    dirs = []
    if os.environ.get("LLAMABUNDLE_BACKEND_DIR"):
        dirs.append(Path(os.environ["LLAMABUNDLE_BACKEND_DIR"]))
    if getattr(sys, "_MEIPASS", None):
        dirs.append(Path(sys._MEIPASS) / "ggml_backends")
    lib = _lib_dir()
    dirs += [lib.parent.parent / "bin", lib]  # pip puts them in site-packages/bin
    return [d for d in dirs if d.is_dir()]


def _loaded_ggml_path(name: str = "ggml.dll") -> str:
    """The libggml that libllama links to, as the dynamic linker loaded it (on Windows,
    the loaded module called ``name``: the frozen runtime may hold a second copy)."""
    if sys.platform == "win32":
        return _windows_module_path(name)
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    path = line.rstrip("\n").split(" ", 5)[-1].strip()
                    if os.path.basename(path).startswith("libggml.so"):
                        return path
        except OSError:
            pass
    names = {"linux": ["libggml.so.0", "libggml.so"], "darwin": ["libggml.0.dylib", "libggml.dylib"]}
    for name in names.get(sys.platform, ["ggml.dll"]):
        if (_lib_dir() / name).exists():
            return str(_lib_dir() / name)
    raise ModelError("the runtime's libggml is missing; the executable is damaged")


def _windows_module_path(name: str) -> str:
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)
    k32.GetModuleHandleW.restype, k32.GetModuleHandleW.argtypes = ctypes.c_void_p, [ctypes.c_wchar_p]
    k32.GetModuleFileNameW.argtypes = [ctypes.c_void_p, ctypes.c_wchar_p, ctypes.c_uint32]
    handle = k32.GetModuleHandleW(name)
    buf = ctypes.create_unicode_buffer(32768)
    if not handle or not k32.GetModuleFileNameW(handle, buf, len(buf)):
        raise ModelError(f"the runtime's {name} is not loaded; the executable is damaged")
    return buf.value


def ggml():
    """ctypes handle on libllama's own libggml, with the registry functions typed.

    On Windows ggml's backend API is split between ggml.dll (the registry: device
    count, loading) and ggml-base.dll (each device's own functions), and GetProcAddress
    does not search a DLL's dependencies the way dlsym does: each is looked up in both."""
    if "ggml" not in _state:
        bindings()  # loads libllama, and with it libggml
        lib = ctypes.CDLL(_loaded_ggml_path())
        owners = [lib, ctypes.CDLL(_loaded_ggml_path("ggml-base.dll"))] if sys.platform == "win32" else [lib]
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, res, args in [
            ("ggml_backend_load_all_from_path", None, [cp]),
            ("ggml_backend_load", vp, [cp]),
            ("ggml_backend_dev_count", sz, []),
            ("ggml_backend_dev_get", vp, [sz]),
            ("ggml_backend_dev_name", cp, [vp]),
            ("ggml_backend_dev_description", cp, [vp]),
            ("ggml_backend_dev_type", ctypes.c_int, [vp]),
            ("ggml_backend_dev_memory", None, [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)]),
            ("ggml_backend_dev_backend_reg", vp, [vp]),
            ("ggml_backend_reg_name", cp, [vp]),
            ("ggml_backend_reg_get_proc_address", vp, [vp, cp]),
            ("ggml_backend_reg_by_name", vp, [cp]),
            ("ggml_backend_register", None, [vp]),
            ("ggml_backend_reg_dev_count", sz, [vp]),
            ("ggml_backend_reg_dev_get", vp, [vp, sz]),
            ("ggml_backend_dev_by_name", vp, [cp]),
            ("ggml_backend_dev_by_type", vp, [ctypes.c_int]),
        ]:
            fn = next(getattr(o, name) for o in owners if hasattr(o, name))
            fn.restype, fn.argtypes = res, args
            setattr(lib, name, fn)
        _state["ggml"] = lib
    return _state["ggml"]


def init(verbose: bool = False) -> None:
    """Route logs, load every ggml backend module once, and init llama.cpp."""
    if _state.get("ready"):
        return
    C = bindings()
    _state["verbose"] = verbose
    _set_logging(C, verbose)
    C.llama_backend_init()
    lib = ggml()
    for d in backend_dirs():
        with _stderr_to_log(enabled=not verbose):
            lib.ggml_backend_load_all_from_path(str(d).encode())
        if any(dev["type"] == "cpu" for dev in devices()):
            break
    if not any(dev["type"] == "cpu" for dev in devices()):
        raise ModelError(
            "no ggml CPU backend can run on this CPU (it lacks the instructions every bundled "
            "variant needs); rebuild llama-cpp-python with a lower baseline"
        )
    _state["ready"] = True


@contextmanager
def _stderr_to_log(enabled: bool):
    """While backend modules load, what they print straight to stderr (not through
    llama.cpp's log: ggml-vulkan's "Vulkan 1.2 required") goes to the log instead, for
    ``-v`` and behind the line the runtime prints itself.

    POSIX only. On Windows the mingw-built modules print through msvcrt's descriptor 2,
    which shares its handle with this Python's (another C runtime): redirecting it would
    close that handle under Python's stderr. There ggml's own line stays."""
    if not enabled or os.name != "posix":
        yield
        return
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            if text:
                _log_lines.extend(text.splitlines(keepends=True))
                del _log_lines[:-LOG_KEEP]


def _set_logging(C, verbose: bool) -> None:
    def on_log(level, text, _user):
        line = (text or b"").decode("utf-8", "replace")
        _log_lines.append(line)
        del _log_lines[:-LOG_KEEP]
        for listener in _listeners:
            listener(line)
        if verbose:
            sys.stderr.write(line)

    _state["log_cb"] = C.llama_log_callback(on_log)  # keep a reference: C holds the pointer
    C.llama_log_set(_state["log_cb"], ctypes.c_void_p(0))


@contextmanager
def log_listener(fn):
    """Call ``fn(line)`` for each llama.cpp log line while the block runs."""
    _listeners.append(fn)
    try:
        yield
    finally:
        _listeners.remove(fn)


def recent_logs() -> str:
    return "".join(_log_lines).strip()


_DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def _module_path(name: str) -> Path | None:
    stems = (f"libggml-{name}.so", f"ggml-{name}.dll", f"libggml-{name}.dylib")
    # Only in optional/: one beside the CPU variants was loaded with them at start already.
    found = (d / OPTIONAL / s for d in backend_dirs() for s in stems)
    return next((p for p in found if p.exists()), None)


def has_module(name: str) -> bool:
    """Whether a ggml backend module (``vulkan``, ``rpc``) ships with this runtime, loaded
    or not (ggml skips one that cannot load, such as Vulkan's without a Vulkan loader)."""
    return _module_path(name) is not None


def load_module(name: str) -> bool:
    """Load an optional backend module (``vulkan``, ``rpc``) now: they sit apart from the CPU
    variants (in ``optional/``), so a start that does not need them does not pay for them
    (Vulkan's is 28 MB, and its registration starts a Vulkan instance). Whether it loaded."""
    if name in _state.setdefault("optional", {}):
        return _state["optional"][name]
    path = _module_path(name)
    loaded = False
    if path is not None:
        with _stderr_to_log(enabled=not _state.get("verbose")):
            loaded = bool(ggml().ggml_backend_load(str(path).encode()))
    _state["optional"][name] = loaded
    return loaded


def devices() -> list[dict]:
    lib = ggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            {
                "name": (lib.ggml_backend_dev_name(dev) or b"").decode(),
                "description": (lib.ggml_backend_dev_description(dev) or b"").decode(),
                "type": _DEV_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
                "memory_total": total.value,
                "memory_free": free.value,
                "backend": (lib.ggml_backend_reg_name(lib.ggml_backend_dev_backend_reg(dev)) or b"").decode(),
            }
        )
    return out


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


def cpu_backend_features() -> dict[str, str]:
    """Features the loaded ggml CPU variant was compiled for (AVX2, FMA, ...)."""
    lib = ggml()
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        if lib.ggml_backend_dev_type(dev) != 0:
            continue
        reg = lib.ggml_backend_dev_backend_reg(dev)
        addr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
        if not addr:
            return {}
        fn = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)(addr)
        feats, arr, j = {}, fn(reg), 0
        while arr[j].name:
            feats[arr[j].name.decode()] = arr[j].value.decode()
            j += 1
        return feats
    return {}


def loaded_cpu_variant() -> str | None:
    """The ggml CPU variant module ggml picked (e.g. 'haswell'), from its load log."""
    for line in _log_lines:
        if "loaded CPU backend from" in line:
            name = os.path.basename(line.strip().split(" from ", 1)[1])
            stem = name.split(".")[0].removeprefix("lib")  # libggml-cpu-haswell.so, ggml-cpu-zen4.dll
            return stem.removeprefix("ggml-cpu-")
    return None
