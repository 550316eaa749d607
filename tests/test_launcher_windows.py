"""The Windows launcher (runtime/launcher/win32.c), cross-compiled with mingw-w64 and run
under Wine. The runtime it starts is a fake: a tiny C program that prints its arguments,
LLAMABUNDLE_EXE and its own path, so no Windows Python is needed. The stub around it is
made by bundler.native's real ``assemble`` for target "windows"."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import assert_one_line_error, shared_lock
from runtime.bundle import payload

pytestmark = pytest.mark.e2e

FAKE_RUNTIME = r"""
#include <windows.h>
#include <fcntl.h>
#include <io.h>
#include <stdio.h>
#include <wchar.h>
static void put(const char *key, const wchar_t *s) {
    char buf[16384];
    WideCharToMultiByte(CP_UTF8, 0, s, -1, buf, sizeof buf, NULL, NULL);
    printf("%s=%s\n", key, buf);
}
static volatile LONG interrupted;
static BOOL WINAPI on_interrupt(DWORD type) {
    if (type == CTRL_C_EVENT) InterlockedIncrement(&interrupted);
    return TRUE;
}
/* Ctrl-C to everything on this console (the launcher too); 42 if we saw it, 44 if no console. */
static int interrupt(void) {
    SetConsoleCtrlHandler(on_interrupt, TRUE);
    if (!GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0)) return 44;
    Sleep(1000);
    return interrupted ? 42 : 43;
}
static void mark(const wchar_t *path, const wchar_t *suffix) {
    wchar_t p[4096];
    _snwprintf(p, 4095, L"%ls%ls", path, suffix);
    p[4095] = 0;
    CloseHandle(CreateFileW(p, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL));
}
int wmain(int argc, wchar_t **argv) {
    wchar_t v[4096];
    int code = 0;
    _setmode(_fileno(stdout), _O_BINARY);
    for (int i = 0; i < argc; i++) {
        put("arg", argv[i]);
        if (!wcsncmp(argv[i], L"--exit=", 7)) code = _wtoi(argv[i] + 7);
        if (!wcscmp(argv[i], L"--ctrl-c")) code = interrupt();
    }
    put("exe", GetEnvironmentVariableW(L"LLAMABUNDLE_EXE", v, 4096) ? v : L"(unset)");
    GetModuleFileNameW(NULL, v, 4096);
    put("self", v);
    fflush(stdout);
    for (int i = 1; i < argc; i++) {
        if (wcsncmp(argv[i], L"--mark=", 7)) continue;
        mark(argv[i] + 7, L".started");
        Sleep(3000);
        mark(argv[i] + 7, L".finished");
    }
    return code;
}
"""
WINE_ENV = {"WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml=", "LANG": "C.UTF-8"}


def winpath(p: Path) -> str:
    """Wine maps the Linux root as drive Z:."""
    return "Z:" + str(p.resolve()).replace("/", "\\")


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    args: list[str]
    values: dict


class Wine:
    def __init__(self, prefix: Path):
        self.env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
        self.env.update(WINE_ENV, WINEPREFIX=str(prefix))

    def call(self, *cmd: str, env=None, timeout=60) -> subprocess.CompletedProcess:
        """Wine 8 fails programs whose standard streams are regular files: stdin is
        /dev/null, stdout and stderr are pipes."""
        env = {**self.env, **(env or {})}
        return subprocess.run(list(cmd), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              encoding="utf-8", errors="replace", timeout=timeout)  # fmt: skip

    def run(self, exe: Path, *args: str, cache: Path | str | None = None, env=None) -> Ran:
        env = dict(env or {})
        if cache is not None:
            env[payload.CACHE_ENV] = cache if isinstance(cache, str) else winpath(cache)
        proc = self.call("wine", str(exe), *args, env=env)
        lines = [line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line]
        return Ran(proc.returncode, proc.stdout, proc.stderr, [v for k, v in lines if k == "arg"],
                   {k: v for k, v in lines if k != "arg"})  # fmt: skip

    def unix(self, path: str) -> Path:
        return Path(self.call("winepath", "-u", path).stdout.strip())


@pytest.fixture(scope="module")
def wine(tmp_path_factory, request):
    if not (shutil.which("wine") and shutil.which("wineserver") and shutil.which("winepath")):
        pytest.skip("wine is not installed (apt-get install wine wine64)")
    # A developer may keep a prefix between runs (making one takes ~15 s); CI makes a fresh one.
    kept = os.environ.get("LLAMABUNDLE_TEST_WINEPREFIX")
    prefix = Path(kept or tmp_path_factory.mktemp("wine"))
    # A kept prefix is one test run's at a time: another would see it half made, and the
    # `wineserver -k` at the end would stop the wineserver of the other run's tests.
    lock = shared_lock(prefix.with_name(prefix.name + ".lock"), "Wine prefix", request.config)
    with lock if kept else contextlib.nullcontext():
        w = Wine(prefix)
        if not (prefix / "system.reg").exists():
            w.call("wine", "wineboot", "--init", timeout=300)
            w.call("wine", "reg", "add", r"HKCU\Software\Wine", "/v", "Version", "/d", "win10", "/f")
        subprocess.run(["wineserver", "-p"], env=w.env, check=True)  # stays up: each start is then fast
        # The first program of a Wine session starts Wine's own services, which keep its standard
        # streams open while the server runs: they get /dev/null, never a test's pipes.
        subprocess.run(["wine", "cmd", "/c", "exit"], env=w.env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip
        yield w
        subprocess.run(["wineserver", "-k"], env=w.env)


@pytest.fixture(scope="module")
def mingw() -> str:
    from bundler.errors import StubError
    from bundler.windows import toolchain

    try:
        return toolchain.tool("cc")
    except StubError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def win_stub(mingw, wine, tmp_path_factory) -> Path:
    """tales.exe: the Windows launcher in front of a fake runtime folder."""
    from bundler import native
    from bundler.windows import toolchain

    work = tmp_path_factory.mktemp("win-stub")
    (work / "fake.c").write_text(FAKE_RUNTIME)
    onedir = work / "onedir"
    (onedir / "_internal" / "sub").mkdir(parents=True)
    (onedir / "_internal" / "sub" / "data.txt").write_text("some data\n")
    exe = onedir / (payload.RUNTIME_EXE + ".exe")
    subprocess.run([mingw, "-O2", "-municode", "-o", str(exe), str(work / "fake.c"), "-static", "-s"],
                   check=True, capture_output=True)  # fmt: skip
    (work / "build").mkdir()
    with pytest.MonkeyPatch.context() as mp:  # zstd's sources: the developer's cache, else this run's
        if not os.environ.get(toolchain.TOOLCHAIN_ENV):
            mp.setenv(toolchain.TOOLCHAIN_ENV, str(work / "toolchain"))
        native.assemble(onedir, work / "build", work / "tales.exe", target_os="windows")
    return work / "tales.exe"


def runtime_id(stub: Path) -> str:
    with open(stub, "rb") as f:
        f.seek(-payload.STUB_TRAILER.size, os.SEEK_END)
        fields = payload.STUB_TRAILER.unpack(f.read())
    return fields[-1].decode()


def archive_span(stub: Path) -> tuple[int, int]:
    with open(stub, "rb") as f:
        f.seek(-payload.STUB_TRAILER.size, os.SEEK_END)
        _, _, _, offset, size, _ = payload.STUB_TRAILER.unpack(f.read())
    return offset, size


def dotted(cache: Path) -> list[str]:
    root = cache / "runtime"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def test_arguments_exit_code_and_bundle_path_pass_through(win_stub, wine, tmp_path):
    args = ["plain", "two words", 'say "hi"', "ünïcødé ✓ 😀", "", "back\\slash\\", 'a\\"b', "--exit=7"]
    ran = wine.run(win_stub, *args, cache=tmp_path / "cache")
    assert ran.returncode == 7, ran
    assert ran.args[1:] == args
    assert ran.args[0].lower().endswith("tales.exe")  # the runtime names itself after the bundle
    assert ran.values["exe"] == winpath(win_stub)
    home = tmp_path / "cache" / "runtime" / runtime_id(win_stub)
    assert ran.values["self"] == winpath(home / (payload.RUNTIME_EXE + ".exe"))
    assert ran.stderr == ""
    assert wine.run(win_stub, "--exit=0", cache=tmp_path / "cache").returncode == 0


def test_first_start_unpacks_once_later_starts_reuse_it(win_stub, wine, tmp_path):
    cache = tmp_path / "cache"
    assert wine.run(win_stub, cache=cache).returncode == 0
    home = cache / "runtime" / runtime_id(win_stub)
    data = home / "_internal" / "sub" / "data.txt"
    assert data.read_text() == "some data\n"
    assert [p.name for p in (cache / "runtime").iterdir()] == [home.name]
    assert dotted(cache) == []
    exe = home / (payload.RUNTIME_EXE + ".exe")
    before = exe.stat().st_mtime_ns
    data.unlink()
    left_over = cache / "runtime" / f".{'0' * 32}.999996.tmp"  # an unpack would remove it first
    left_over.mkdir()
    ran = wine.run(win_stub, "again", cache=cache)
    assert ran.returncode == 0 and ran.args[1:] == ["again"]
    assert left_over.exists() and not data.exists() and exe.stat().st_mtime_ns == before


def test_a_bundle_finds_its_runtime_before_the_model(win_stub, wine, model, tmp_path):
    """A bundle appends the model after the stub: the launcher finds the stub's end through
    the payload trailer, as on Linux."""
    from bundler import fuse

    bundle = tmp_path / "tales.exe"
    fuse.fuse(win_stub, model, bundle)
    ran = wine.run(bundle, "--exit=9", cache=tmp_path / "cache")
    assert ran.returncode == 9 and ran.values["exe"] == winpath(bundle), ran
    assert (tmp_path / "cache" / "runtime" / runtime_id(win_stub)).is_dir()


def test_the_cache_dir_option_comes_before_the_environment(win_stub, wine, tmp_path):
    for args in (["--cache-dir", winpath(tmp_path / "a")], [f"--cache-dir={winpath(tmp_path / 'b')}"]):
        ran = wine.run(win_stub, *args, cache=tmp_path / "env")
        assert ran.returncode == 0 and ran.args[1:] == args
    for name in ("a", "b"):
        assert (tmp_path / name / "runtime" / runtime_id(win_stub)).is_dir()
    assert not (tmp_path / "env").exists()


def test_leftovers_of_a_killed_first_start_are_removed(win_stub, wine, tmp_path):
    cache = tmp_path / "cache"
    stale = cache / "runtime" / f".{'0' * 32}.999996.tmp"  # Windows pids are multiples of 4; none this high
    (stale / "_internal").mkdir(parents=True)
    (stale / "_internal" / "half-written.dll").write_bytes(b"\0" * 1000)
    assert wine.run(win_stub, cache=cache).returncode == 0
    assert not stale.exists() and dotted(cache) == []


def _aged(path: Path, days: float) -> Path:
    when = time.time() - days * 86400
    os.utime(path, (when, when))
    return path


def test_a_new_runtime_removes_old_ones_nobody_started_for_a_month(win_stub, wine, tmp_path):
    root = tmp_path / "cache" / "runtime"
    keep = payload.RUNTIME_KEEP_DAYS
    for name in ("a" * 32, "b" * 32, "notes"):
        (root / name / "_internal").mkdir(parents=True)
    stale = _aged(root / ("a" * 32), keep + 10)
    recent = _aged(root / ("b" * 32), keep - 10)
    not_ours = _aged(root / "notes", keep + 10)  # not a runtime's name: never touched
    assert wine.run(win_stub, cache=tmp_path / "cache").returncode == 0
    assert not stale.exists() and recent.exists() and not_ours.exists()
    assert (root / runtime_id(win_stub)).is_dir() and dotted(tmp_path / "cache") == []


def test_a_start_marks_its_runtime_used_at_most_once_a_day(win_stub, wine, tmp_path):
    cache = tmp_path / "cache"
    assert wine.run(win_stub, cache=cache).returncode == 0
    home = _aged(cache / "runtime" / runtime_id(win_stub), 3)
    assert wine.run(win_stub, cache=cache).returncode == 0
    assert home.stat().st_mtime > time.time() - 600  # marked used now
    within_a_day = _aged(home, 1 / 24).stat().st_mtime
    assert wine.run(win_stub, cache=cache).returncode == 0
    assert home.stat().st_mtime == within_a_day  # no write


def test_a_damaged_runtime_archive_is_one_line(win_stub, wine, tmp_path):
    offset, size = archive_span(win_stub)
    data = bytearray(win_stub.read_bytes())
    # A run of damaged bytes: a single flipped bit can land on one of the few bits a zstd
    # frame does not use (a window descriptor's, a bitstream's padding) and change nothing.
    for i in range(size // 2, size // 2 + 32):
        data[offset + i] ^= 0x40
    bad = tmp_path / "tales.exe"
    bad.write_bytes(bytes(data))
    ran = wine.run(bad, cache=tmp_path / "cache")
    assert ran.returncode == 3, ran
    assert_one_line_error(ran, "tales: error: the runtime archive is damaged", "rebuild")
    assert list((tmp_path / "cache" / "runtime").iterdir()) == []  # the half-unpacked copy is gone


def test_a_stub_without_its_runtime_is_one_line(win_stub, wine, tmp_path):
    offset, _ = archive_span(win_stub)
    cut = tmp_path / "tales.exe"
    cut.write_bytes(win_stub.read_bytes()[: offset + 1000])
    ran = wine.run(cut, cache=tmp_path / "cache")
    assert ran.returncode == 3, ran
    assert_one_line_error(ran, "runtime is missing")


def test_an_unwritable_cache_unpacks_for_this_run_only(win_stub, wine, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # no folder can be made under a file, not even by root
    ran = wine.run(win_stub, "--exit=5", cache=blocker / "cache")
    assert ran.returncode == 5 and ran.stderr == "", ran
    folder = ran.values["self"].rsplit("\\", 1)[0]
    assert "\\llamabundle-" in folder and not folder.startswith(winpath(blocker))
    unix = wine.unix(folder)
    assert str(unix).startswith("/") and not unix.exists()  # the private copy is gone
    assert [p for p in unix.parent.iterdir() if p.name.startswith("llamabundle-")] == []


def test_the_runtime_dies_with_the_launcher(win_stub, wine, tmp_path):
    """The runtime runs in a job that is killed when the launcher's handle to it closes."""
    marker = tmp_path / "mark"
    env = {**wine.env, payload.CACHE_ENV: winpath(tmp_path / "cache")}
    cmd = ["wine", str(win_stub), f"--mark={winpath(marker)}"]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe)
    try:
        deadline = time.monotonic() + 30
        while not marker.with_name("mark.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.with_name("mark.started").exists()
    finally:
        proc.kill()  # the launcher's own process (Wine runs it as the process it started)
        proc.communicate()
    time.sleep(4)  # the runtime would have finished by now
    assert not marker.with_name("mark.finished").exists()


def test_ctrl_c_reaches_the_runtime_and_the_launcher_waits_for_it(win_stub, wine, tmp_path):
    """The runtime sends Ctrl-C to its whole console; the launcher ignores it and passes on
    the runtime's exit code. Wine gives a console only to programs on a terminal: `script`."""
    if not shutil.which("script"):
        pytest.skip("script (util-linux) is not installed: no terminal to give Wine a console")
    env = {**wine.env, payload.CACHE_ENV: winpath(tmp_path / "cache")}
    cmd = f"wine {shlex.quote(str(win_stub))} --ctrl-c"
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=60)  # fmt: skip
    if proc.returncode == 44:
        pytest.skip("this Wine gives the runtime no console to send Ctrl-C to")
    assert proc.returncode == 42, proc  # 43: the runtime saw no Ctrl-C; else the launcher died


def test_windows_runtimes_refuse_symbolic_links(tmp_path):
    import io

    from bundler import native
    from bundler.errors import StubError

    (tmp_path / "run.exe").write_bytes(b"MZ")
    (tmp_path / "link").symlink_to("run.exe")
    native.pack(tmp_path, io.BytesIO())  # POSIX runtimes keep links
    with pytest.raises(StubError, match="symbolic link"):
        native.pack(tmp_path, io.BytesIO(), windows=True)


def test_a_missing_mingw_compiler_is_one_line(tmp_path, monkeypatch):
    from bundler import native
    from bundler.errors import StubError

    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if "mingw32" in name else real_which(name))
    with pytest.raises(StubError) as info:
        native.compile_launcher(tmp_path, target_os="windows")
    assert "gcc-mingw-w64-x86-64-posix" in str(info.value) and "\n" not in str(info.value)


def test_the_decoder_is_zstd_without_its_encoder():
    from bundler.native import decoder_only

    def inlined(name: str) -> str:
        return f"/**** start inlining {name} ****/\n{name} body\n"

    names = ["common/a.c", "compress/b.c", "decompress/c.c", "dictBuilder/d.c"]
    source = "#define X 1\n" + "".join(inlined(n) for n in names)
    out = decoder_only(source)
    assert out == "#define X 1\n" + inlined("common/a.c") + inlined("decompress/c.c")
    assert decoder_only("no markers at all") == "no markers at all"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux launcher builds on Linux")
def test_the_linux_launcher_still_compiles(tmp_path):
    from bundler import native

    out = native.compile_launcher(tmp_path)
    assert out.read_bytes()[:4] == b"\x7fELF"
    header = (tmp_path / "launcher_format.h").read_text()
    assert f"#define LB_STUB_TRAILER_SIZE {payload.STUB_TRAILER.size}" in header
