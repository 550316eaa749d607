"""The runtime stub: runtime/ frozen by PyInstaller into one executable.

A stub is built once per (platform, llamabundle runtime sources, llama-cpp-python
build, PyInstaller, Python) and kept in a content-addressed cache, so that
``llamabundle build`` only has to append a model to it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import runtime
from runtime.bundle.digest import update as digest_update
from runtime.bundle.payload import RUNTIME_EXE
from runtime.bundle.source import cache_root, lock_file
from runtime.llama.backend import OPTIONAL

from . import native
from .errors import InputError, StubError
from .inputs import open_input

STUB_NAME = RUNTIME_EXE
SOURCE_DIRS = ("runtime", "templates")
BUILD_FILES = ("bundler/stub.py", "bundler/native.py")  # how the stub is made is part of its key
# What llama_cpp's package __init__ and its high-level API would drag in: the runtime
# drives the C API only (runtime/llama/backend.py), so none of it is ever imported. One
# pure-Python module is kept: llama_grammar, the JSON-schema-to-grammar converter.
EXCLUDES = ("llama_cpp.llama", "llama_cpp.llama_chat_format",
            "llama_cpp.llama_cache", "llama_cpp.llama_tokenizer", "llama_cpp.llama_speculative",
            "llama_cpp.llama_types", "llama_cpp.llava_cpp", "llama_cpp.mtmd_cpp", "llama_cpp.server",
            "llama_cpp._internals", "llama_cpp._utils", "numpy", "pydantic", "pydantic_core",
            "yaml", "diskcache", "hypothesis", "openai", "jiter", "charset_normalizer", "sqlite3",
            "ssl", "_ssl", "zstandard._cffi", "cffi", "tkinter", "pytest", "pydoc", "unittest",
            "lib2to3", "multiprocessing", "xmlrpc", "pdb")  # fmt: skip
SYSTEM_LIBRARIES = ("libvulkan.so.1", "vulkan-1.dll")
LLAMA_LIBS = ("libllama.so", "libggml.so.0", "libggml-base.so.0", "libllama.dylib", "libggml.0.dylib",
              "libggml-base.0.dylib", "llama.dll", "ggml.dll", "ggml-base.dll")  # fmt: skip


def project_root() -> Path:
    return Path(runtime.__file__).resolve().parent.parent


def llama_cpp_dirs() -> tuple[Path, Path]:
    """(llama_cpp/lib with libllama and libggml, directory of the ggml backend modules)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise StubError("llama-cpp-python is not installed; run ./install.sh")
    pkg = Path(list(spec.submodule_search_locations)[0])
    lib, variants = pkg / "lib", pkg.parent / "bin"
    if not backend_modules(variants) and backend_modules(lib):  # some platforms keep them in lib/
        variants = lib
    if not backend_modules(variants):
        raise StubError(
            f"llama-cpp-python has no ggml CPU variant modules in {variants}; it was not built "
            "with GGML_BACKEND_DL=ON and GGML_CPU_ALL_VARIANTS=ON: run ./install.sh"
        )
    return lib, variants


def backend_modules(d: Path) -> list[Path]:
    """ggml's CPU variant (and other backend) modules: libggml-cpu-*.so on Linux and
    macOS, ggml-cpu-*.dll on Windows."""
    return sorted(p for pat in ("libggml-*", "ggml-*") for p in d.glob(pat) if "base" not in p.name
                  and p.suffix in (".so", ".dll", ".dylib"))  # fmt: skip


def optional_modules(d: Path) -> list[Path]:
    """The backend modules the runtime loads only when needed (Vulkan, RPC), kept apart in
    ``optional/`` so that ggml's load-everything-in-the-folder skips them at start."""
    return backend_modules(d / OPTIONAL)


def _sha256_file(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        digest_update(digest, f)
    return digest


def stub_key() -> str:
    """Content hash of everything that goes into the stub."""
    lib, variants = llama_cpp_dirs()
    h = hashlib.sha256()
    for part in (
        runtime.__version__,
        sysconfig.get_platform(),
        sys.version,
        md.version("pyinstaller"),
        md.version("llama_cpp_python"),
    ):
        h.update(part.encode() + b"\0")
    root = project_root()
    files = [p for d in SOURCE_DIRS for p in (root / d).rglob("*") if p.is_file()]
    files += [root / f for f in BUILD_FILES]
    files += [p for p in list(lib.iterdir()) + backend_modules(variants) + optional_modules(variants)
              if p.is_file()]  # fmt: skip
    for p in sorted(files):
        if "__pycache__" in p.parts:
            continue
        h.update(p.name.encode() + b"\0")
        _sha256_file(p, h)
    return h.hexdigest()[:20]


def host_os() -> str:
    return native.HOST_OS


def stub_for(target_os: str, rebuild: bool = False, log=print) -> Path:
    """The cached runtime stub for ``target_os``, built on this host if it can be."""
    host = host_os()
    if target_os == host:
        return cached_stub(rebuild=rebuild, log=log)
    if target_os == "windows" and host == "linux":
        from .windows import stub as windows_stub

        return windows_stub.cached_stub(rebuild=rebuild, log=log)
    raise StubError(
        f"a {target_os} runtime cannot be built on {host}: build it on {target_os} with "
        "'llamabundle stub' (or take it from the release workflow) and pass it with --runtime"
    )


def cached_stub(rebuild: bool = False, log=print) -> Path:
    """Path of this machine's runtime stub, building it first if it is not cached."""
    key = stub_key()
    target = cache_root() / "stubs" / key / STUB_NAME
    if target.exists() and not rebuild:
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(target.parent.parent / f"{key}.lock"):  # one build at a time; others reuse it
        if target.exists() and not rebuild:
            return target
        build_stub(target, log=log)
    return target


def pyinstaller_args(
    root: Path,
    libs: list[Path],
    backends: list[Path],
    tmp: Path,
    *,
    onedir: bool,
    sep: str = os.pathsep,
    path=str,
    extra_binaries=(),
    optional=(),
) -> list[str]:
    """PyInstaller's arguments for the runtime, the same for every OS. ``path`` turns
    a host path into one the (maybe emulated) building Python can open, ``sep`` is
    that Python's path separator in --add-data."""
    args = [
        "--onedir" if onedir else "--onefile", "--noconfirm", "--clean", "--log-level", "WARN",
        "--name", STUB_NAME, "--distpath", path(tmp / "dist"), "--workpath", path(tmp / "work"),
        "--specpath", path(tmp), "--paths", path(root),
        "--hidden-import", "llama_cpp.llama_cpp", "--hidden-import", "llama_cpp.llama_grammar",
        "--hidden-import", "zstandard",
        "--copy-metadata", "llama_cpp_python",
    ]  # fmt: skip
    for name in EXCLUDES:
        args += ["--exclude-module", name]
    if (root / "templates").is_dir() and any((root / "templates").iterdir()):
        args += ["--add-data", f"{path(root / 'templates')}{sep}templates"]
    for lib in libs:  # by the sonames libllama links to; the other copies are dead weight
        args += ["--add-binary", f"{path(lib)}{sep}llama_cpp/lib"]
    for so in backends:
        args += ["--add-binary", f"{path(so)}{sep}ggml_backends"]
    for so in optional:
        args += ["--add-binary", f"{path(so)}{sep}ggml_backends/{OPTIONAL}"]
    for dll in extra_binaries:
        args += ["--add-binary", f"{path(dll)}{sep}."]
    return [*args, path(root / "runtime" / "__main__.py")]


def drop_system_libraries(built: Path) -> None:
    """PyInstaller collects what the backend modules link, the Vulkan loader among them. The
    loader belongs to the machine: it finds that machine's GPU drivers, and a copy taken from
    the build machine would only hide that a machine has none (ggml then skips its module)."""
    for name in SYSTEM_LIBRARIES:
        for p in built.rglob(name):
            p.unlink()


def build_stub(target: Path, log=print) -> None:
    lib, variants = llama_cpp_dirs()
    root = project_root()
    log(
        f"Building the runtime stub for {platform.system().lower()}-{platform.machine()} "
        "(once per llamabundle and llama.cpp version; about a minute)..."
    )
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="llamabundle-stub-") as tmp:
        tmp = Path(tmp)
        onedir = native.supported()
        libs = [lib / name for name in LLAMA_LIBS if (lib / name).exists()]
        cmd = [sys.executable, "-m", "PyInstaller",
               *pyinstaller_args(root, libs, backend_modules(variants), tmp, onedir=onedir,
                                 optional=optional_modules(variants))]  # fmt: skip
        if sys.platform != "win32":
            cmd.insert(-1, "--strip")
        env = dict(os.environ, PYTHONHASHSEED="0")
        env.setdefault("SOURCE_DATE_EPOCH", "315532800")
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        # PyInstaller names a Windows onefile build "<name>.exe"; a one-folder build is a folder
        built = tmp / "dist" / (STUB_NAME if onedir or sys.platform != "win32" else STUB_NAME + ".exe")
        if proc.returncode != 0 or not built.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise StubError(f"PyInstaller failed to build the runtime stub:\n{tail}")
        if built.is_dir():
            drop_system_libraries(built)
        install(built, tmp, target, onedir)
    size = target.stat().st_size / 2**20
    log(f"Runtime stub built in {time.monotonic() - start:.0f} s: {target} ({size:.1f} MiB)")


def install(built: Path, tmp: Path, target: Path, onedir: bool, target_os: str | None = None) -> None:
    """Put PyInstaller's output (a one-folder build behind our launcher, or a onefile
    executable) at ``target``, through a temporary file renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if onedir:
        native.assemble(built, tmp, part, target_os or native.HOST_OS)
    else:
        shutil.copyfile(built, part)
        os.chmod(part, 0o755)
    os.replace(part, target)


def executable_kind(path: Path) -> dict:
    """OS, architecture and format of an executable, read from its header."""
    with open_input(path, "runtime stub", "check the --runtime path") as f:
        head = f.read(4096)
    if head[:4] == b"\x7fELF":
        endian = "little" if head[5] == 1 else "big"
        machine = int.from_bytes(head[18:20], endian)
        osabi = {0: "linux", 3: "linux", 9: "freebsd"}.get(head[7], "unix")
        arch = {0x3E: "x86_64", 0xB7: "aarch64", 0x03: "x86", 0x28: "arm"}.get(machine, hex(machine))
        return {"os": osabi, "arch": arch, "format": "elf"}
    if head[:2] == b"MZ" and len(head) >= 64:
        pe = int.from_bytes(head[60:64], "little")
        if head[pe : pe + 4] == b"PE\0\0":
            machine = int.from_bytes(head[pe + 4 : pe + 6], "little")
            arch = {0x8664: "x86_64", 0xAA64: "aarch64", 0x14C: "x86"}.get(machine, hex(machine))
            return {"os": "windows", "arch": arch, "format": "pe"}
    macho = {b"\xcf\xfa\xed\xfe": "little", b"\xfe\xed\xfa\xcf": "big"}
    if head[:4] in macho:
        cpu = int.from_bytes(head[4:8], macho[head[:4]])
        arch = {0x01000007: "x86_64", 0x0100000C: "arm64"}.get(cpu, hex(cpu))
        return {"os": "macos", "arch": arch, "format": "macho"}
    if head[:4] in (b"\xca\xfe\xba\xbe", b"\xbe\xba\xfe\xca"):
        return {"os": "macos", "arch": "universal", "format": "macho"}
    raise InputError(f"{path} is not an executable (ELF, PE or Mach-O); pass a runtime stub")


def target_os(asked: str | None, output: Path | None, runtime_stub: Path | None) -> str:
    """--os, else what --runtime is, else windows for a .exe output, else this machine's."""
    exe = output is not None and output.suffix.lower() == ".exe"
    if runtime_stub is not None:
        given = executable_kind(runtime_stub)["os"]
        wanted = asked or ("windows" if exe else given)
        if given != wanted:
            why = f"--os {asked}" if asked else f"the .exe name of {output}"
            raise InputError(f"--runtime {runtime_stub} is a {given} runtime stub, but {why} asks for "
                             f"{wanted}; pass a {wanted} stub (llamabundle stub --os {wanted}) or change "
                             f"{'--os' if asked else 'the output name'}")  # fmt: skip
        return given
    return asked or ("windows" if exe else host_os())
