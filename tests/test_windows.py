"""A Windows bundle built on this Linux host and run under Wine, as a user would run it.

The Windows runtime stub is the real one: PyInstaller run by a Windows CPython
under Wine, llama.cpp's DLLs cross-compiled with mingw-w64, our launcher built
for Windows (bundler/windows/). Wine is not Windows (see README): these tests
prove the Python, the launcher, the bundle format and the Windows API use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from conftest import PROMPT, TOOLCHAIN, Served, assert_one_line_error, run_cli, run_exe
from runtime.bundle import payload

pytestmark = pytest.mark.e2e

WINE_ENV = {"WINEPREFIX": str(Path(TOOLCHAIN) / "windows" / "wineprefix"), "WINEDEBUG": "-all"}
SHA = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"  # stories260K.gguf


def winpath(p: Path | str) -> str:
    """Wine maps the Linux root as drive Z:."""
    return "Z:" + str(p).replace("/", "\\")


def wine_env(extra: dict | None = None) -> dict:
    env = {**os.environ, **WINE_ENV, **(extra or {})}
    env["LLAMABUNDLE_CACHE"] = winpath(env["LLAMABUNDLE_CACHE"])
    return env


def wine(
    exe: Path, *args: str, input: str | None = None, env=None, timeout=300
) -> subprocess.CompletedProcess:
    """Run a Windows executable under Wine. Wine 8 fails a program whose standard streams
    are regular files, so stdin is /dev/null or a pipe, and stdout and stderr are pipes."""
    return subprocess.run(
        ["wine", str(exe), *args], input=input, stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout, env=wine_env(env),
    )  # fmt: skip


def greedy(exe: Path, n: int = 48, runner=None, **kw) -> str:
    """The greedy completion, with Windows' text-mode line ends made "\n"."""
    proc = (runner or wine)(exe, "-p", PROMPT, "-n", str(n), "--temp", "0", **kw)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.replace("\r\n", "\n")


@pytest.fixture(scope="module", autouse=True)
def wineserver(windows_stub):
    """One wineserver for the module. The first program of a Wine session starts Wine's
    own services, which keep that program's standard streams open: warm it up with
    output to /dev/null, so no test waits for a pipe a service holds."""
    env = wine_env({"LLAMABUNDLE_CACHE": "/nonexistent"})
    subprocess.run(["wineserver", "-p"], env=env, check=True)
    subprocess.run(["wine", "cmd", "/c", "exit"], env=env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)  # fmt: skip
    yield
    subprocess.run(["wineserver", "-k"], env=env)


@pytest.fixture(scope="module")
def tales_exe(windows_stub, model, stub_cache, tmp_path_factory) -> Path:
    """`llamabundle build stories260K.gguf -o tales.exe`, the stub found in the stub cache."""
    out = tmp_path_factory.mktemp("win") / "tales.exe"
    proc = run_cli(
        ["build", str(model), "-o", str(out)], env={**os.environ, "LLAMABUNDLE_CACHE": str(stub_cache)}
    )
    assert proc.returncode == 0, proc.stderr
    assert " for windows-x86_64 " in proc.stdout, proc.stdout
    return out


def test_a_dot_exe_output_is_a_windows_bundle(tales_exe, windows_stub):
    assert tales_exe.read_bytes()[:2] == b"MZ"
    b = payload.read_bundle(str(tales_exe))
    assert b.manifest["stub"]["os"] == "windows" and b.manifest["stub"]["format"] == "pe"
    assert b.model["storage"] == "embedded"


def test_prompt_prints_what_the_linux_bundle_prints(tales_exe, bundle):
    linux = greedy(bundle, runner=run_exe)
    assert greedy(tales_exe) == linux and len(linux.split()) > 20


def test_info_names_windows_and_the_cpu_variant(tales_exe, windows_stub):
    proc = wine(tales_exe, "--info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["runtime"]["os"] == "windows" and info["manifest"]["stub"]["os"] == "windows"
    variant = info["hardware"]["ggml"]["cpu_variant"]
    built = {p.name for p in _dlls(windows_stub).glob("ggml-cpu-*.dll")}
    assert f"ggml-cpu-{variant}.dll" in built, (variant, built)


def _dlls(windows_stub) -> Path:
    from bundler.windows import llama

    return llama.location() / "lib"


@pytest.fixture(scope="module")
def served_exe(tales_exe, tmp_path_factory):
    cache = tmp_path_factory.mktemp("served-cache")
    s = Served(tales_exe, "--temp", "0", prefix=("wine",), env=wine_env({"LLAMABUNDLE_CACHE": str(cache)}))
    s.wait_ready(timeout=120)
    yield s
    s.stop()


def test_server_answers_the_openai_client(served_exe, tales_exe, bundle):
    client = openai.OpenAI(base_url=served_exe.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["stories260K"]
    ask = {"model": "stories260K", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16,
           "temperature": 0}  # fmt: skip
    chat = client.chat.completions.create(**ask)
    text = chat.choices[0].message.content
    assert text and chat.usage.completion_tokens > 0
    streamed = client.chat.completions.create(**ask, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
    done = client.completions.create(model="stories260K", prompt=PROMPT, max_tokens=16, temperature=0)
    assert greedy(bundle, 16, runner=run_exe).startswith(done.choices[0].text.rstrip("\n"))
    emb = client.embeddings.create(model="stories260K", input=["one", "two"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 8


def test_web_chat_loads_and_answers_in_chromium(served_exe):
    sync_api = pytest.importorskip("playwright.sync_api")
    own = urlsplit(served_exe.url).netloc
    refused: list[str] = []
    short_tmp = tempfile.mkdtemp(prefix="lb-", dir="/tmp")  # Chromium's socket paths must be short
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--headless", "--no-sandbox", "--disable-gpu",
                                               "--disable-background-networking"],
                                         env={**os.environ, "TMPDIR": short_tmp})  # fmt: skip
            ctx = browser.new_context()
            ctx.route("**/*", lambda r: r.continue_() if urlsplit(r.request.url).netloc == own
                      else (refused.append(r.request.url), r.abort()))  # fmt: skip
            page = ctx.new_page()
            page.goto(served_exe.url + "/")
            _until(lambda: page.text_content("#model-name") == "stories260K")
            page.fill("#prompt", PROMPT)
            page.keyboard.press("Enter")
            reply = (
                "() => [...document.querySelectorAll('#messages .msg.assistant .content')].pop()?.textContent"
            )
            _until(lambda: len(page.evaluate(reply) or "") > 10)
            browser.close()
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert refused == []


def _until(cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_cli_chat_with_piped_input(tales_exe, bundle):
    args = ("--cli", "--temp", "0", "-n", "16")
    linux = run_exe(bundle, *args, input=f"{PROMPT}\n/bye\n")
    proc = wine(tales_exe, *args, input=f"{PROMPT}\n/bye\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.replace("\r\n", "\n") == linux.stdout and proc.stdout.startswith("> ")


def test_verify_passes_and_catches_one_flipped_byte(tales_exe, tmp_path):
    proc = wine(tales_exe, "--verify")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    bad = tmp_path / "tales.exe"
    data = bytearray(tales_exe.read_bytes())
    b = payload.read_bundle(str(tales_exe))
    data[b.model["offset"] + b.model["size"] - 100] ^= 0x01  # a weight, past what every start hashes
    bad.write_bytes(bytes(data))
    proc = wine(bad, "--verify")
    assert_one_line_error(proc, "sha256")


def test_compressed_bundle_unpacks_once(windows_stub, model, tmp_path, tales_exe):
    out = tmp_path / "talesz.exe"
    run_cli(["build", str(model), "-o", str(out), "--runtime", str(windows_stub), "--compress"], check=True)
    expected = greedy(tales_exe, 24)
    assert greedy(out, 24) == expected
    cached = Path(os.environ["LLAMABUNDLE_CACHE"]) / "models" / f"{SHA}.gguf"
    before = cached.stat().st_mtime_ns
    assert greedy(out, 24) == expected
    assert cached.stat().st_mtime_ns == before


def test_split_bundle_runs(windows_stub, model, tmp_path, tales_exe):
    out = tmp_path / "taless.exe"
    run_cli(["build", str(model), "-o", str(out), "--runtime", str(windows_stub), "--split",
             "--split-size", "256K"], check=True)  # fmt: skip
    assert len(payload.read_bundle(str(out)).model["parts"]) > 1
    assert greedy(out, 24) == greedy(tales_exe, 24)


def test_over_4_gib_without_split_is_refused(windows_stub, tmp_path):
    from test_authoring import _sparse_gguf

    work = tmp_path / "work"
    work.mkdir()
    big = _sparse_gguf(work / "big.gguf", 4 * 2**30 + 2**20)
    proc = run_cli(["build", str(big), "-o", str(work / "big.exe"), "--runtime", str(windows_stub)])
    assert_one_line_error(proc, "Windows", "--split")
    assert sorted(p.name for p in work.iterdir()) == ["big.gguf"]


def test_a_first_start_killed_mid_unpack_is_recovered(tales_exe, tmp_path):
    cache = Path(os.environ["LLAMABUNDLE_CACHE"])
    runtimes = cache / "runtime"
    proc = subprocess.Popen(["wine", str(tales_exe), "-p", PROMPT, "-n", "4"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=wine_env(),
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(runtimes.glob(".*.tmp")):
        time.sleep(0.005)
    assert list(runtimes.glob(".*.tmp")), "the first start never began unpacking"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not [p for p in runtimes.iterdir() if len(p.name) == 32], "a half-unpacked runtime is in place"
    assert greedy(tales_exe, 8)  # the next start unpacks again and runs
    names = [p.name for p in runtimes.iterdir()]
    assert len([n for n in names if len(n) == 32]) == 1 and not [n for n in names if n.endswith(".tmp")]


def test_windows_cpython_with_one_changed_byte_is_refused(windows_stub, tmp_path):
    from bundler.errors import StubError
    from bundler.windows import python

    shutil.copytree(python.location(), tmp_path / "py", ignore=shutil.ignore_patterns("Lib"))
    target = tmp_path / "py" / "python312.dll"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(StubError, match="python312.dll fails its Authenticode check"):
        python.check_signatures(tmp_path / "py")
    python.check_signatures(python.location())  # the cached one passes


def test_a_bundle_named_outside_the_ansi_code_page(tales_exe, tmp_path):
    """The model is opened by a wide-character path (_wfopen) and the path printed as
    UTF-8 through a pipe, where Windows' default would be cp1252."""
    folder = tmp_path / "故事 ✓"
    folder.mkdir()
    exe = folder / "故事.exe"
    shutil.copyfile(tales_exe, exe)
    assert greedy(exe, 16) == greedy(tales_exe, 16)
    proc = wine(exe, "--info")
    assert proc.returncode == 0, proc.stderr
    assert "故事 ✓\\故事.exe" in proc.stdout


def test_the_gpu_and_rpc_modules_ship_and_vulkan_failing_is_one_line(tales_exe, windows_stub):
    """Wine 8's Vulkan (vulkan-1.dll over the host's loader and lavapipe) cannot start the
    Vulkan 1.2 instance ggml needs. The runtime's own probe finds that first, so ggml's
    module is not even loaded (it would print its own complaint, which on Windows cannot
    be caught): the bundle runs on the CPU, and insisting on Vulkan is one line, exit 5."""
    proc = wine(tales_exe, "--info", "--json")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    gpu = json.loads(proc.stdout)["hardware"]["gpu"]
    assert gpu["layers"] == 0 and gpu["why"] != "this bundle has no GPU module", gpu
    insisted = wine(tales_exe, "-p", PROMPT, "-n", "4", "--gpu", "vulkan")
    assert_one_line_error(insisted, "--gpu vulkan", "Vulkan 1.2")
    assert insisted.returncode == 5


def test_the_vulkan_module_imports_only_what_the_vulkan_loader_exports(windows_stub):
    """Linked against an import library made from the headers (bundler/windows/vulkan.py):
    every function it imports must be one vulkan-1.dll exports, or Windows would refuse
    to load it. Wine's vulkan-1.dll exports what the Khronos loader does."""
    loader = next(Path("/usr/lib").glob("*/wine/x86_64-windows/vulkan-1.dll"))  # Debian's wine64
    dump = subprocess.run(["x86_64-w64-mingw32-objdump", "-p", str(loader)], capture_output=True, text=True)
    exported = set(re.findall(r"\]\s+(vk\w+)", dump.stdout))
    imported = _vulkan_imports(_dlls(windows_stub) / "ggml-vulkan.dll")
    assert len(exported) > 100 and "vkGetInstanceProcAddr" in imported, (len(exported), imported)
    assert set(imported) <= exported, set(imported) - exported


def _vulkan_imports(dll: Path) -> list[str]:
    """The functions ``dll`` imports from vulkan-1.dll, from its PE import table."""
    out = subprocess.run(["x86_64-w64-mingw32-objdump", "-p", str(dll)], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    names, inside = [], False
    for line in out.splitlines():
        if line.strip().startswith("DLL Name:"):
            inside = line.split(":", 1)[1].strip().lower() == "vulkan-1.dll"
        elif inside and (m := re.match(r"\s+[0-9a-f]+\s+\d+\s+(vk\w+)", line)):
            names.append(m[1])
    return names


def test_a_windows_worker_lends_its_cpu_to_a_linux_leader(tales_exe, bundle):
    """RPC across OSes: the Windows bundle under Wine as the worker, the Linux one leads."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = subprocess.Popen(["wine", str(tales_exe), "--rpc-worker", "--port", str(port), "-t", "1"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=wine_env(), text=True)  # fmt: skip
    try:
        said = [worker.stderr.readline()]
        while said[-1] and "RPC worker" not in said[-1]:  # after ggml's Vulkan line, under Wine
            said.append(worker.stderr.readline())
        assert "RPC worker" in said[-1], said
        ask = ("-p", PROMPT, "--raw", "-n", "32", "--temp", "0")
        alone = run_exe(bundle, *ask)
        split = run_exe(bundle, *ask, "--rpc", f"127.0.0.1:{port}", timeout=300)
        assert split.returncode == 0, split.stderr
        assert split.stdout == alone.stdout and alone.stdout.strip()
    finally:
        worker.kill()
        worker.wait(timeout=30)
