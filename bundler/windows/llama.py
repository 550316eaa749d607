"""llama.cpp's Windows DLLs, cross-compiled with mingw-w64 from the sdist install.sh keeps.

The same llama-cpp-python sdist gives both the ctypes bindings (its pure-Python
``llama_cpp`` package) and the C++ sources they bind, so the Windows stub's
bindings always match its DLLs. The build has the Linux wheel's flags (portable,
every CPU variant as its own module, loaded at run time), with three changes:

* mingw-w64 10 (Debian 12) lacks ``THREAD_POWER_THROTTLING_STATE``, which
  ggml-cpu.c uses on Windows 8 and later: a forced-include header supplies it,
  only when the installed headers do not.
* ggml's own thread pool instead of OpenMP: with mingw's libgomp, stories260K
  generated 44-49 tokens/s on 2 threads under Wine, with ggml's pool 480 (1,700 on
  one thread either way; bench/windows.py). Linux keeps OpenMP.
* ggml's Vulkan and RPC backends are built too, as two more modules (``vulkan.py``),
  with the changes bundler/ggml_source.py makes to their sources on Linux too.
* GCC 12 cannot assemble the ``sapphirerapids`` (AMX) variant for mingw; the
  sources already leave AMX out for MSVC, and we leave it out for mingw (in a
  scratch copy of the sources: ggml makes every variant a dependency of ggml).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from .. import ggml_source
from ..errors import StubError
from . import toolchain, vulkan
from .toolchain import MINGW, tool

FLAGS = ("-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON",
         "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
         "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_CURL=OFF",
         "-DCMAKE_BUILD_TYPE=Release", "-DGGML_OPENMP=OFF", "-DGGML_RPC=ON")  # fmt: skip
SKIP_VARIANTS = {"sapphirerapids": "GCC 12 cannot assemble its AMX code for mingw"}
LEFT_OUT = "# left out by llamabundle: "
VARIANTS_ENV = "LLAMABUNDLE_WINDOWS_CPU_VARIANTS"  # a comma list, to build fewer (tests); default all
# The mingw runtime DLLs the llama.cpp DLLs link (C++ and threads).
MINGW_DLLS = ("libgcc_s_seh-1.dll", "libstdc++-6.dll", "libwinpthread-1.dll")
LIBS = ("llama.dll", "ggml.dll", "ggml-base.dll")
MODULES = ("ggml-vulkan.dll", "ggml-rpc.dll")  # backends beside the CPU variants
THROTTLING_H = """\
/* mingw-w64 10 lacks what ggml-cpu.c needs to opt out of Windows 11's core parking
   (added in mingw-w64 11). Written by llamabundle's Windows cross-build. */
#ifdef _WIN32
typedef struct _THREAD_POWER_THROTTLING_STATE {
    unsigned long Version, ControlMask, StateMask;
} THREAD_POWER_THROTTLING_STATE;
#define THREAD_POWER_THROTTLING_CURRENT_VERSION 1
#define THREAD_POWER_THROTTLING_EXECUTION_SPEED 0x1
#endif
"""


def version() -> str:
    return md.version("llama_cpp_python")


def sdist() -> Path:
    """The llama-cpp-python sdist of the installed version (install.sh keeps one)."""
    kept = toolchain.cache_dir() / "sdist" / f"llama_cpp_python-{version()}.tar.gz"
    if kept.is_file():
        return kept
    return toolchain.download("llama-cpp-python", version(), "the llama.cpp sources", sdist=True)


def variants_wanted() -> list[str] | None:
    raw = os.environ.get(VARIANTS_ENV, "").strip()
    return [v.strip() for v in raw.split(",") if v.strip()] or None if raw else None


def dlls(log) -> Path:
    """A folder with lib/ (llama.dll, ggml*.dll, the ggml-cpu-*.dll variants and the
    mingw runtime DLLs), llama_cpp/ (the matching bindings) and their dist-info;
    built once per key."""
    final = location()
    if final.is_dir():
        return final
    with toolchain.building(final) as tmp:
        if tmp is not None:
            # The compiler's work stays beside the cache until the build succeeds, so a
            # failed or killed build resumes where it stopped (ninja rebuilds what changed).
            work = final.with_name(f".{final.name}.work")
            _build(sdist(), tmp, work, tool("cc"), tool("cxx"), variants_wanted(), log)
            shutil.rmtree(work)
    return final


def location() -> Path:
    """Where the DLLs built from this sdist, compiler and variant choice are cached."""
    tool("cmake"), tool("ninja"), tool("windres")
    cc, cxx = tool("cc"), tool("cxx")
    k = toolchain.key("llama-dlls-3", sdist(), " ".join(FLAGS), toolchain.tool_version(cc),
                      toolchain.tool_version(cxx), ",".join(variants_wanted() or ["all"]),
                      Path(ggml_source.__file__), *vulkan.key_parts())  # fmt: skip
    return toolchain.cache_dir() / "windows" / f"llama-{version()}-{k}"


def _build(src: Path, out: Path, work: Path, cc: str, cxx: str, wanted: list[str] | None, log) -> None:
    if not (work / "extracted").exists():
        shutil.rmtree(work, ignore_errors=True)
        with tarfile.open(src) as tar:
            tar.extractall(work / "src", filter="data")
        (work / "extracted").write_text("")
    top = next((work / "src").iterdir())
    llama_src = top / "vendor" / "llama.cpp"
    _choose_variants(llama_src / "ggml" / "src" / "CMakeLists.txt", wanted)
    try:
        ggml_source.rpc(llama_src)
        flags = vulkan.configure(llama_src, work, tool("dlltool"))
    except ggml_source.SourceChanged as e:
        raise StubError(str(e)) from None
    cmake_file = work / "mingw.cmake"
    cmake_file.write_text(_toolchain_file(cc, cxx))
    cflags = ""
    if not _headers_have_throttling(cc):
        (work / "mingw_compat.h").write_text(THROTTLING_H)
        cflags = f"-include {work / 'mingw_compat.h'}"
    build = work / "build"
    configure = [tool("cmake"), "-S", str(llama_src), "-B", str(build), "-G", "Ninja",
                 f"-DCMAKE_TOOLCHAIN_FILE={cmake_file}", f"-DCMAKE_C_FLAGS={cflags}",
                 f"-DCMAKE_MAKE_PROGRAM={tool('ninja')}", *FLAGS,
                 *flags]  # fmt: skip
    toolchain.run(configure, "configuring llama.cpp for Windows (cmake)")
    variants = _variants(build)
    log(f"    {len(variants)} CPU variants: {', '.join(variants)}")
    jobs = str(os.cpu_count() or 2)
    targets = ["--target", "llama", *(m.removesuffix(".dll") for m in MODULES)]
    toolchain.run_counted([tool("cmake"), "--build", str(build), "-j", jobs, *targets],
                          "cross-compiling llama.cpp with mingw-w64", log)  # fmt: skip
    # mingw's platform files name llama's DLL libllama.dll whatever the toolchain file says
    # (ggml names its own); the bindings load either name, and nothing links to it.
    built = {"llama.dll" if p.name == "libllama.dll" else p.name: p for p in build.rglob("*.dll")}
    names = [*LIBS, *(f"ggml-cpu-{v}.dll" for v in variants), *MODULES]
    missing = [n for n in names if n not in built]
    if missing:
        raise StubError(f"the mingw build of llama.cpp made no {', '.join(missing)}")
    lib = out / "lib"
    lib.mkdir()
    for n in names:
        shutil.copy2(built[n], lib / n)
        subprocess.run([f"{MINGW}-strip", "--strip-unneeded", str(lib / n)], capture_output=True)
    for n in MINGW_DLLS:
        shutil.copy2(_mingw_dll(cc, n), lib / n)
    shutil.copytree(top / "llama_cpp", out / "llama_cpp", ignore=shutil.ignore_patterns("lib", "__pycache__"))
    # PyInstaller's --copy-metadata (and the runtime's --version) read the package's metadata.
    info = out / f"llama_cpp_python-{version()}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: {version()}\n")


def _choose_variants(cmakelists: Path, wanted: list[str] | None) -> None:
    """Leave out of the build (in our scratch copy of the sources) the CPU variants
    mingw cannot build, or those not asked for: ggml makes every variant a
    dependency of ggml itself, so building fewer targets would not build fewer."""
    text = cmakelists.read_text()
    pattern = re.compile(rf"^(\s*)(?:{LEFT_OUT})?(ggml_add_cpu_backend_variant\(([\w.]+)[\s)])", re.M)
    names = {m[3] for m in pattern.finditer(text)}
    if wanted and set(wanted) - names:
        raise StubError(
            f"{VARIANTS_ENV} names unknown CPU variants: {', '.join(sorted(set(wanted) - names))}"
        )
    if not names >= set(SKIP_VARIANTS):
        raise StubError("llama.cpp's CPU variant list is not what the mingw build expects; update llama.py")

    def keep(m: re.Match) -> str:
        drop = m[3] in SKIP_VARIANTS or (wanted and m[3] not in wanted)
        return f"{m[1]}{LEFT_OUT if drop else ''}{m[2]}"

    cmakelists.write_text(pattern.sub(keep, text))


def _variants(build: Path) -> list[str]:
    """The CPU variant modules this configure defines (from ninja's own target list)."""
    proc = toolchain.run([tool("ninja"), "-C", str(build), "-t", "targets", "all"], "listing build targets")
    found = sorted(set(re.findall(r"^ggml-cpu-([\w.]+?)(?:\.dll)?: ", proc.stdout, re.M)))
    if not found:
        raise StubError("the llama.cpp configure defined no ggml CPU variants")
    return found


def _toolchain_file(cc: str, cxx: str) -> str:
    return f"""set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)
set(CMAKE_C_COMPILER {cc})
set(CMAKE_CXX_COMPILER {cxx})
set(CMAKE_RC_COMPILER {tool("windres")})
set(CMAKE_FIND_ROOT_PATH /usr/{MINGW})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
"""


def _headers_have_throttling(cc: str) -> bool:
    proc = subprocess.run([cc, "-print-sysroot"], capture_output=True, text=True)
    roots = [Path(proc.stdout.strip() or "/") / "usr" / MINGW / "include", Path(f"/usr/{MINGW}/include"),
             Path("/usr/share/mingw-w64/include")]  # fmt: skip
    for root in roots:
        for header in (root / "processthreadsapi.h", root / "winbase.h", root / "winnt.h"):
            if header.is_file() and "THREAD_POWER_THROTTLING_STATE" in header.read_text(errors="replace"):
                return True
    return False


def _mingw_dll(cc: str, name: str) -> Path:
    proc = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = Path(proc.stdout.strip())
    if path.is_absolute() and path.is_file():
        return path
    for root in (Path(f"/usr/{MINGW}/lib"), Path("/usr/lib/gcc") / MINGW):
        for p in sorted(root.rglob(name)) if root.is_dir() else []:
            if "posix" in str(p) or name == "libwinpthread-1.dll":
                return p
    raise StubError(f"mingw's {name} is missing; install gcc-mingw-w64-x86-64-posix")
