"""The native launcher (runtime/launcher/, POSIX part): it unpacks the runtime once into a
content-addressed cache, safely under concurrent first starts, and execs it."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROMPT, assert_one_line_error, run_exe
from runtime.bundle import payload


def stub_trailer(path: Path, end: int | None = None) -> dict:
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END) if end is None else end
        f.seek(end - payload.STUB_TRAILER.size)
        values = payload.STUB_TRAILER.unpack(f.read(payload.STUB_TRAILER.size))
    return dict(zip((name for name, _ in payload.STUB_TRAILER_FIELDS), values, strict=True))


def runtime_dirs(cache: Path) -> list[Path]:
    root = cache / "llamabundle" / "runtime"
    return sorted(root.iterdir()) if root.is_dir() else []


def complete(exe: Path, **kw) -> subprocess.CompletedProcess:
    proc = run_exe(exe, "-p", PROMPT, "-n", "12", "--temp", "0", **kw)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.e2e  # the real stub (a ~90 s build) and a bundle fused from it
def test_the_stub_carries_a_native_launcher_and_a_packed_runtime(stub, bundle):
    t = stub_trailer(stub)
    assert t["magic"] == payload.STUB_MAGIC and t["version"] == payload.STUB_VERSION
    end = t["archive_offset"] + t["archive_size"] + payload.STUB_TRAILER.size
    assert t["entries"] > 10 and end == stub.stat().st_size
    start = payload.read_bundle(str(bundle)).payload_start
    assert start == stub.stat().st_size and stub_trailer(bundle, start) == t  # fused bytes unchanged
    assert stub.stat().st_size < 30 * 2**20


@pytest.mark.e2e
def test_first_start_unpacks_once_later_starts_reuse_it(bundle, isolated_caches):
    first = complete(bundle)
    dirs = runtime_dirs(isolated_caches)
    assert [d.name for d in dirs] == [stub_trailer(bundle, payload.read_bundle(str(bundle)).payload_start)
                                      ["runtime_id"].rstrip(b"\0").decode()]  # fmt: skip
    exe = dirs[0] / payload.RUNTIME_EXE
    before = {p: p.stat().st_mtime_ns for p in dirs[0].rglob("*")}
    assert exe.is_file() and len(before) > 10
    again = complete(bundle)
    assert again.stdout == first.stdout
    assert {p: p.stat().st_mtime_ns for p in dirs[0].rglob("*")} == before  # nothing rewritten
    assert not [p for p in dirs[0].parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.e2e
def test_concurrent_first_starts_share_one_unpacked_runtime(bundle, isolated_caches):
    procs = [subprocess.Popen([str(bundle), "-p", PROMPT, "-n", "12", "--temp", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert len({o for o, _ in outs}) == 1 and outs[0][0].strip()
    root = isolated_caches / "llamabundle" / "runtime"
    assert len(runtime_dirs(isolated_caches)) == 1
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.e2e
def test_leftovers_of_a_killed_first_start_are_removed(bundle, isolated_caches):
    root = isolated_caches / "llamabundle" / "runtime"
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    stale = root / f".{'0' * 32}.{gone.pid}.tmp"
    (stale / "_internal").mkdir(parents=True)
    (stale / "_internal" / "half-written.so").write_bytes(b"\0" * 1000)
    alive = root / f".{'1' * 32}.{os.getpid()}.tmp"  # its writer still runs: kept
    alive.mkdir()
    complete(bundle)
    assert not stale.exists() and alive.exists()


def _old_runtime(root: Path, name: str, days: float, exe: bytes = b"") -> Path:
    d = root / name
    (d / "_internal").mkdir(parents=True)
    (d / payload.RUNTIME_EXE).write_bytes(exe)
    (d / payload.RUNTIME_EXE).chmod(0o755)
    when = time.time() - days * 86400
    os.utime(d, (when, when))
    return d


@pytest.mark.e2e
def test_a_new_runtime_removes_old_ones_nobody_started_for_a_month(bundle, isolated_caches):
    root = isolated_caches / "llamabundle" / "runtime"
    keep = payload.RUNTIME_KEEP_DAYS
    stale = _old_runtime(root, "a" * 32, keep + 10)
    recent = _old_runtime(root, "b" * 32, keep - 10)
    running = _old_runtime(root, "c" * 32, keep + 10, exe=Path("/bin/sleep").read_bytes())
    not_ours = root / "notes"  # not a runtime's name: never touched
    not_ours.mkdir()
    os.utime(not_ours, (0, 0))
    sleeper = subprocess.Popen([str(running / payload.RUNTIME_EXE), "60"])
    via_link = isolated_caches.parent / "via-link"  # /proc/PID/exe is resolved; the cache path need not be
    via_link.symlink_to(isolated_caches)
    try:
        complete(bundle, env={payload.CACHE_ENV: str(via_link / "llamabundle")})  # this runtime's first start
    finally:
        sleeper.kill()
        sleeper.wait()
    names = {d.name for d in runtime_dirs(isolated_caches)}
    assert not stale.exists()
    assert {recent.name, running.name, not_ours.name} < names and len(names) == 4
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


@pytest.mark.e2e
def test_a_start_marks_its_runtime_used_at_most_once_a_day(bundle, isolated_caches):
    complete(bundle)
    (ours,) = runtime_dirs(isolated_caches)
    long_ago = time.time() - 3 * 86400
    os.utime(ours, (long_ago, long_ago))
    complete(bundle)
    touched = ours.stat().st_mtime
    assert touched > time.time() - 600  # marked used now
    yesterday_and_less = time.time() - 3600
    os.utime(ours, (yesterday_and_less, yesterday_and_less))
    complete(bundle)
    assert ours.stat().st_mtime == yesterday_and_less  # within a day: no write


@pytest.mark.e2e
def test_an_unwritable_cache_unpacks_for_this_run_only(bundle, tmp_path, isolated_caches):
    if os.geteuid() == 0:
        cache = Path("/proc/version/llamabundle")  # even root cannot create anything here
    else:
        cache = tmp_path / "readonly"
        cache.mkdir()
        cache.chmod(stat.S_IRUSR | stat.S_IXUSR)
    tmpdir = Path(os.environ["TMPDIR"])
    proc = complete(bundle, env={payload.CACHE_ENV: str(cache)})
    assert proc.stderr == ""
    assert list(tmpdir.iterdir()) == []  # the private copy is gone


@pytest.mark.e2e
def test_the_runtime_gets_the_bundle_path_not_the_variable(bundle):
    """LLAMABUNDLE_EXE tells the runtime which file it was started from and is not
    passed on: a stale value in the environment changes nothing."""
    proc = run_exe(bundle, "--info", "--json", env={payload.LAUNCHER_ENV: "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    assert str(bundle) in proc.stdout


@pytest.mark.e2e
def test_a_damaged_runtime_archive_is_one_line(bundle, tmp_path):
    data = bytearray(bundle.read_bytes())
    t = stub_trailer(bundle, payload.read_bundle(str(bundle)).payload_start)
    mid = t["archive_offset"] + t["archive_size"] // 2
    data[mid : mid + 64] = bytes(64)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    proc = run_exe(bad, "-p", PROMPT)
    assert proc.returncode == 3
    assert_one_line_error(proc, "runtime archive is damaged", "rebuild")
    assert runtime_dirs(Path(os.environ["LLAMABUNDLE_CACHE"]).parent) == []


@pytest.mark.e2e
def test_a_bundle_without_its_runtime_is_one_line(bundle, tmp_path):
    cut = tmp_path / "cut"
    cut.write_bytes(bundle.read_bytes()[:300_000])
    cut.chmod(0o755)
    proc = run_exe(cut, "-p", PROMPT)
    assert proc.returncode == 3
    assert_one_line_error(proc, "runtime is missing")


def test_header_constants_come_from_the_payload_module():
    from bundler import native

    h = native.header()
    assert f"#define LB_STUB_TRAILER_SIZE {payload.STUB_TRAILER.size}\n" in h
    assert f"#define LB_TRAILER_PAYLOAD_START {struct.calcsize('<8sHHI')}\n" in h
    assert '#define LB_MAGIC "LLBUNDLE"' in h


def test_pack_round_trips_through_the_launcher_format(tmp_path):
    """bundler.native.pack writes what the launcher reads: entries in order, links kept."""
    import zstandard

    from bundler import native

    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f.txt").write_text("hello")
    (src / "run").write_bytes(b"#!/bin/sh\n")
    (src / "run").chmod(0o755)
    (src / "link").symlink_to("run")
    out = tmp_path / "archive"
    with open(out, "wb") as f:
        count, size = native.pack(src, f)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(out.read_bytes())
    seen, pos = [], 0
    while pos < len(raw):
        kind, mode, plen, _, n = payload.ENTRY.unpack_from(raw, pos)
        pos += payload.ENTRY.size
        path = raw[pos : pos + plen].decode()
        pos += plen
        seen.append((kind, oct(mode), path, raw[pos : pos + n]))
        pos += n
    assert count == len(seen) == 5 and size == out.stat().st_size
    assert seen == [
        (payload.ENTRY_DIR, "0o755", "a", b""),
        (payload.ENTRY_LINK, "0o777", "link", b"run"),
        (payload.ENTRY_FILE, "0o755", "run", b"#!/bin/sh\n"),
        (payload.ENTRY_DIR, "0o755", "a/b", b""),
        (payload.ENTRY_FILE, "0o644", "a/b/f.txt", b"hello"),
    ]


def test_windows_stubs_get_a_relocated_pyinstaller_cookie(tmp_path):
    """PyInstaller onefile stubs (Windows) scan back from the end of the file for their
    archive's cookie: the bundle's tail carries a copy whose archive start is unchanged."""
    from bundler.onefile_cookie import COOKIE, COOKIE_MAGIC, cookie_tail

    archive = b"A" * 1000
    cookie = COOKIE.pack(COOKIE_MAGIC, len(archive) + COOKIE.size, 10, 20, 311, b"python3.dll")
    stub = tmp_path / "stub.exe"
    stub.write_bytes(b"MZ" + b"\0" * 98 + archive + cookie)
    size = stub.stat().st_size
    tail = cookie_tail(stub, size, 5000)
    magic, length, toc, toc_len, pyvers, _ = COOKIE.unpack(tail)
    assert (magic, toc, toc_len, pyvers) == (COOKIE_MAGIC, 10, 20, 311)
    assert 5000 + COOKIE.size - length == 100  # the archive still starts after the 100-byte head
    native = tmp_path / "native"
    native.write_bytes(b"\x7fELF" + b"\0" * 100 + cookie + payload.STUB_TRAILER.pack(
        payload.STUB_MAGIC, payload.STUB_VERSION, 0, 0, 0, b""))  # fmt: skip
    assert cookie_tail(native, native.stat().st_size, 5000) == b""
