"""The Windows runtime stub, frozen by PyInstaller running under Wine.

The Windows CPython (``python.py``) runs PyInstaller on runtime/ with llama.cpp's
mingw-built DLLs (``llama.py``); the one-folder result goes behind the Windows
build of our native launcher, as on Linux (bundler/native.py), so a start runs
from a cached runtime instead of unpacking PyInstaller's onefile archive.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from runtime.bundle.source import cache_root, lock_file

from .. import stub as host_stub
from ..errors import StubError
from . import llama, python, toolchain
from .toolchain import Steps, Wine, tool

STUB_FILE = host_stub.STUB_NAME + ".exe"
BUILD_FILES = ("bundler/windows/stub.py", "bundler/windows/python.py", "bundler/windows/llama.py",
               "bundler/windows/toolchain.py")  # fmt: skip
# Seconds each step took cold on 2 cores (see README), for the estimate shown.
STEP_SECONDS = {"Windows CPython and wheels": 70, "llama.cpp DLLs (mingw-w64)": 480, "PyInstaller": 70}
ONEFILE_ENV = "LLAMABUNDLE_WINDOWS_ONEFILE"  # "1": PyInstaller's onefile stub (to measure against)


def onefile() -> bool:
    return os.environ.get(ONEFILE_ENV) == "1"


def check_tools() -> None:
    """Every host tool, checked before any work starts: one line naming what is missing."""
    for name in toolchain.TOOLS:
        tool(name)


def stub_key(interp: Path, dlls: Path) -> str:
    root = host_stub.project_root()
    files = [p for d in host_stub.SOURCE_DIRS for p in (root / d).rglob("*") if p.is_file()]
    files += [root / f for f in (*host_stub.BUILD_FILES, *BUILD_FILES)]
    files = sorted(p for p in files if "__pycache__" not in p.parts)
    return toolchain.key("windows-stub-1", interp.name, dlls.name, str(onefile()), *files)[:20]


def cached_stub(rebuild: bool = False, log=print) -> Path:
    """This checkout's Windows runtime stub, building what is missing."""
    check_tools()
    interp, dlls = python.location(), llama.location()
    target = cache_root() / "stubs" / stub_key(interp, dlls) / STUB_FILE
    if target.exists() and not rebuild:
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(target.parent.parent / f"{target.parent.name}.lock"):
        if target.exists() and not rebuild:
            return target
        start = time.monotonic()
        steps = Steps(log, {k: v for k, v in STEP_SECONDS.items() if not _cached(k, interp, dlls)})
        with steps.step("Windows CPython and wheels", cached=interp.is_dir()):
            python.interpreter(log)
        with steps.step("llama.cpp DLLs (mingw-w64)", cached=dlls.is_dir()):
            llama.dlls(log)
        with steps.step("PyInstaller"):
            freeze(interp, dlls, target)
    size = target.stat().st_size / 2**20
    log(f"Windows runtime stub built in {time.monotonic() - start:.0f} s: {target} ({size:.1f} MiB)")
    return target


def _cached(step: str, interp: Path, dlls: Path) -> bool:
    return {"Windows CPython and wheels": interp.is_dir(), "llama.cpp DLLs (mingw-w64)": dlls.is_dir()}.get(
        step, False
    )


def freeze(interp: Path, dlls: Path, target: Path) -> None:
    root = host_stub.project_root()
    lib = dlls / "lib"
    backends = sorted(lib.glob("ggml-cpu-*.dll"))
    # llama.dll where the bindings look for it; what it and the CPU variants link (ggml,
    # mingw's runtime) in the top folder, on the DLL search path, once: PyInstaller
    # would otherwise put a second copy there of what it finds llama.dll needs.
    top = [lib / n for n in (*llama.LIBS, *llama.MINGW_DLLS) if n != "llama.dll"]
    wine = python.wine_prefix()
    wine.ensure()
    with tempfile.TemporaryDirectory(prefix="llamabundle-winstub-") as tmp:
        tmp = Path(tmp)
        args = host_stub.pyinstaller_args(root, [lib / "llama.dll"], backends, tmp, onedir=not onefile(),
                                          sep=";", path=Wine.path, extra_binaries=top,
                                          optional=[lib / m for m in llama.MODULES])  # fmt: skip
        # The embeddable CPython ignores PYTHONPATH (its ._pth file rules): put the
        # llama_cpp bindings and their dist-info on sys.path from inside.
        driver = tmp / "freeze.py"
        driver.write_text(
            "import sys\n"
            f"sys.path[:0] = [{Wine.path(dlls)!r}, {Wine.path(root)!r}]\n"
            "import PyInstaller.__main__\n"
            f"PyInstaller.__main__.run({args!r})\n"
        )
        env = {"PYTHONHASHSEED": "0", "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
        wine.run([str(interp / "python.exe"), Wine.path(driver)], "PyInstaller (under Wine)", cwd=tmp,
                 env=env, timeout=1800)  # fmt: skip
        built = tmp / "dist" / (STUB_FILE if onefile() else host_stub.STUB_NAME)
        if not built.exists():
            raise StubError(f"PyInstaller under Wine reported success but wrote no {built.name}")
        if built.is_dir():
            host_stub.drop_system_libraries(built)
        host_stub.install(built, tmp, target, onedir=not onefile(), target_os="windows")
