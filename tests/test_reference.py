"""Greedy output is token for token what llama.cpp's own `llama-simple` prints.

`llama-simple` is compiled from the llama.cpp sources vendored in the very
llama-cpp-python sdist that install.sh built from, against the same libllama,
and run on the same model and prompt. Its output (prompt + continuation) must
equal the prompt followed by what our executable prints for `-p ... --temp 0`.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import PROMPT, run_exe

pytestmark = pytest.mark.e2e


def _sdist() -> Path:
    marker = Path(sys.prefix) / "llama-cpp-python-sdist"
    if not marker.exists():
        pytest.fail(f"{marker} is missing: run ./install.sh")
    return Path(marker.read_text().strip())


@pytest.fixture(scope="session")
def llama_simple(tmp_path_factory) -> tuple[Path, Path]:
    from bundler.stub import llama_cpp_dirs

    lib, variants = llama_cpp_dirs()
    work = tmp_path_factory.mktemp("llama-simple")
    wanted = ("/vendor/llama.cpp/include/", "/vendor/llama.cpp/ggml/include/",
              "/vendor/llama.cpp/examples/simple/simple.cpp")  # fmt: skip
    with tarfile.open(_sdist()) as tar:
        members = [m for m in tar.getmembers() if any(w in m.name for w in wanted)]
        tar.extractall(work, members=members, filter="data")
    src = next(work.glob("*/vendor/llama.cpp"))
    exe = work / "llama-simple"
    libs = [str(lib / n) for n in ("libllama.so", "libggml.so.0", "libggml-base.so.0") if (lib / n).exists()]
    cmd = ["g++", "-O2", "-std=c++17", str(src / "examples/simple/simple.cpp"),
           "-I", str(src / "include"), "-I", str(src / "ggml/include"), *libs,
           f"-Wl,-rpath,{lib}", "-o", str(exe)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return exe, variants


@pytest.mark.parametrize("n", [16, 64])
def test_greedy_continuation_matches_llama_simple(bundle, model, llama_simple, n):
    exe, variants = llama_simple
    # llama-simple loads the ggml backends from its working directory.
    ref = subprocess.run([str(exe), "-m", str(model), "-n", str(n), PROMPT], cwd=variants,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    assert PROMPT in ref.stdout
    expected = ref.stdout.split(PROMPT, 1)[1]
    ours = run_exe(bundle, "-p", PROMPT, "-n", str(n), "--temp", "0")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == expected
