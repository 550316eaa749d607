"""ggml's Vulkan backend for Windows (ggml-vulkan.dll), cross-built with mingw-w64 in the
same build as the other llama.cpp DLLs (``llama.py``).

Vulkan on Windows is the Khronos loader, ``vulkan-1.dll``, which every GPU driver
installs; the module links it and nothing else of Vulkan's. Debian has no mingw
build of the loader, so the build makes what linking needs from the headers alone:

* an import library for ``vulkan-1.dll``, written by ``dlltool`` from a ``.def`` file
  of every function the headers declare (only those ggml calls end up imported, and
  they are all core Vulkan, which the loader exports);
* a private copy of the Vulkan and SPIR-V headers: pointing mingw at ``/usr/include``
  itself would put glibc's headers ahead of its own.

The shaders are compiled by the host's ``glslc``; ggml builds its shader generator
with the host compiler (its own ExternalProject), so nothing else runs under Wine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .. import ggml_source
from ..errors import StubError
from .toolchain import MINGW

HEADERS = ("vulkan", "vk_video", "spirv")  # folders of /usr/include ggml-vulkan.cpp includes
PROTOTYPE = re.compile(r"^VKAPI_ATTR\s+\w+\s+VKAPI_CALL\s+(vk\w+)\s*\(", re.M)
PACKAGES = "libvulkan-dev glslc spirv-headers"


def host_headers() -> Path:
    """The folder holding the host's vulkan/, vk_video/ and spirv/ headers."""
    root = Path("/usr/include")
    if not (root / "vulkan" / "vulkan_core.h").is_file() or not (root / "spirv").is_dir():
        raise StubError(f"the Windows Vulkan module needs the Vulkan headers: apt-get install {PACKAGES}")
    return root


def glslc() -> str:
    found = shutil.which("glslc")
    if not found:
        raise StubError(f"the Windows Vulkan module needs glslc: apt-get install {PACKAGES}")
    return found


def key_parts() -> list[str | Path]:
    """What the module is built from beyond the sdist: the headers' version, the compiler
    of its shaders, and our change to ggml's source."""
    return [host_headers() / "vulkan" / "vulkan_core.h", subprocess.run(
        [glslc(), "--version"], capture_output=True, text=True).stdout.split("\n", 1)[0],
        Path(__file__).with_name("vulkan.py")]  # fmt: skip


def configure(llama_src: Path, work: Path, dlltool: str) -> list[str]:
    """Prepare the sources and the link inputs; return the cmake flags for the module."""
    ggml_source.vulkan(llama_src)
    include = work / "vulkan-include"
    if not include.is_dir():
        part = work / "vulkan-include.part"
        shutil.rmtree(part, ignore_errors=True)
        for name in HEADERS:
            if (host_headers() / name).is_dir():
                shutil.copytree(host_headers() / name, part / name)
        part.rename(include)
    implib = work / "libvulkan-1.dll.a"
    names = sorted(set(PROTOTYPE.findall((include / "vulkan" / "vulkan_core.h").read_text())))
    if len(names) < 100:
        raise StubError("vulkan_core.h declares almost no functions: the Vulkan headers look broken")
    deffile = work / "vulkan-1.def"
    deffile.write_text("LIBRARY vulkan-1.dll\nEXPORTS\n" + "".join(f"    {n}\n" for n in names))
    proc = subprocess.run([dlltool, "-d", str(deffile), "-l", str(implib)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StubError(f"{MINGW}-dlltool could not write Vulkan's import library: {proc.stderr.strip()}")
    return ["-DGGML_VULKAN=ON", f"-DVulkan_INCLUDE_DIR={include}", f"-DVulkan_LIBRARY={implib}",
            f"-DVulkan_GLSLC_EXECUTABLE={glslc()}"]  # fmt: skip
