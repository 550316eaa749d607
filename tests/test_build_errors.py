"""`llamabundle build` refuses bad input with one line, a non-zero exit and no leftovers."""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest

from conftest import assert_one_line_error, run_cli


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


def _build(model, out, stub):
    return run_cli(["build", str(model), "-o", str(out), "--runtime", str(stub)])


def _assert_nothing_written(work, *keep):
    assert sorted(p.name for p in work.iterdir()) == sorted(keep)


def test_missing_model(work, dummy_stub):
    proc = _build(work / "nope.gguf", work / "out", dummy_stub)
    assert_one_line_error(proc, "nope.gguf", "no such file")
    _assert_nothing_written(work)


def test_not_a_gguf(work, dummy_stub):
    bad = work / "notes.gguf"
    bad.write_text("hello, I am a text file\n")
    proc = _build(bad, work / "out", dummy_stub)
    assert_one_line_error(proc, "notes.gguf", "not a GGUF model")
    _assert_nothing_written(work, "notes.gguf")


@pytest.mark.parametrize("keep", [6, 5000, 600_000, -1])
def test_truncated_gguf(work, dummy_stub, model, keep):
    data = model.read_bytes()
    cut = work / "cut.gguf"
    cut.write_bytes(data[:keep])
    proc = _build(cut, work / "out", dummy_stub)
    assert_one_line_error(proc, "cut.gguf", "truncated")
    _assert_nothing_written(work, "cut.gguf")


def test_newer_gguf_version(work, dummy_stub, model):
    data = bytearray(model.read_bytes())
    struct.pack_into("<I", data, 4, 99)
    newer = work / "newer.gguf"
    newer.write_bytes(data)
    proc = _build(newer, work / "out", dummy_stub)
    assert_one_line_error(proc, "newer.gguf", "version 99", "upgrade llamabundle")
    _assert_nothing_written(work, "newer.gguf")


def test_output_directory_missing(work, dummy_stub, model):
    proc = _build(model, work / "no" / "such" / "dir" / "out", dummy_stub)
    assert_one_line_error(proc, "does not exist")
    _assert_nothing_written(work)


def test_unwritable_output(dummy_stub, model):
    proc = _build(model, "/proc/tales", dummy_stub)
    assert_one_line_error(proc, "/proc/tales", "cannot write")


def test_output_is_the_input(work, dummy_stub, model):
    copy = work / "m.gguf"
    shutil.copy(model, copy)
    proc = _build(copy, copy, dummy_stub)
    assert_one_line_error(proc, "is the input model")
    assert copy.read_bytes() == model.read_bytes()
    _assert_nothing_written(work, "m.gguf")


def test_output_is_a_directory(work, dummy_stub, model):
    proc = _build(model, work, dummy_stub)
    assert_one_line_error(proc, "is a directory")


def test_runtime_that_is_not_an_executable(work, model):
    fake = work / "stub"
    fake.write_text("#!/bin/sh\n")
    proc = _build(model, work / "out", fake)
    assert_one_line_error(proc, "not an executable")
    _assert_nothing_written(work, "stub")


def test_build_summary_line(work, dummy_stub, model):
    proc = _build(model, work / "tales", dummy_stub)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert len(line.splitlines()) == 1
    assert str(work / "tales") in line and "build " in line and "run it with" in line
    _assert_nothing_written(work, "tales")


def test_a_macos_stub_fused_here_says_how_to_re_sign(work, model):
    stub = work / "runtime-macos"
    stub.write_bytes(b"\xcf\xfa\xed\xfe" + (0x0100000C).to_bytes(4, "little") + bytes(4088))
    proc = _build(model, work / "chat", stub)
    assert proc.returncode == 0, proc.stderr
    assert "note: chat is a macOS executable" in proc.stderr and "codesign -s - -f chat" in proc.stderr
    info = json.loads(run_cli(["inspect", str(work / "chat"), "--json"]).stdout)
    assert info["stub"]["os"] == "macos" and info["stub"]["arch"] == "arm64"


# -- the target OS ------------------------------------------------------------------------
def test_a_dot_exe_output_with_a_linux_runtime_is_refused(work, dummy_stub, model):
    proc = _build(model, work / "chat.exe", dummy_stub)
    assert_one_line_error(proc, "is a linux runtime stub", "asks for windows", "--os")
    _assert_nothing_written(work)


def test_os_windows_with_a_linux_runtime_is_refused(work, dummy_stub, model):
    proc = run_cli(["build", str(model), "-o", str(work / "chat"), "--os", "windows", "--runtime",
                    str(dummy_stub)])  # fmt: skip
    assert_one_line_error(proc, "--os windows", "llamabundle stub --os windows")
    _assert_nothing_written(work)


def test_a_macos_runtime_cannot_be_built_here(work, model):
    proc = run_cli(["build", str(model), "-o", str(work / "chat"), "--os", "macos"])
    assert_one_line_error(proc, "macos runtime cannot be built on linux", "--runtime")
    _assert_nothing_written(work)


@pytest.mark.parametrize(
    ("tool", "package"), [("wine", "wine"), ("x86_64-w64-mingw32-gcc-posix", "gcc-mingw-w64-x86-64-posix")]
)
def test_a_missing_windows_tool_names_its_debian_package(work, model, tmp_path, tool, package):
    """A PATH holding every host tool but one: the build says which package brings it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    from bundler.windows.toolchain import TOOLS

    for command, _ in TOOLS.values():
        if command != tool and shutil.which(command):
            (bin_dir / command).symlink_to(shutil.which(command))
    env = {**os.environ, "PATH": str(bin_dir)}
    proc = run_cli(["build", str(model), "-o", str(work / "chat.exe")], env=env)
    assert_one_line_error(proc, f"apt-get install {package}")
    _assert_nothing_written(work)


def test_no_network_for_the_windows_pieces_is_one_line(work, tmp_path):
    """An empty toolchain cache and no reachable PyPI: one line, nothing half-built."""
    cache = tmp_path / "toolchain"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "LLAMABUNDLE_TOOLCHAIN_CACHE": str(cache)}
    proc = run_cli(["stub", "--os", "windows"], env=env)
    assert_one_line_error(proc, "cannot download", "no network?")
    assert proc.returncode == 7
    assert [p.relative_to(cache).as_posix() for p in cache.rglob("*")] == ["downloads"]


def test_a_windows_cpython_wheel_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    from bundler.errors import StubError
    from bundler.windows import python, toolchain

    monkeypatch.setenv(toolchain.TOOLCHAIN_ENV, str(tmp_path / "toolchain"))
    name, version, _ = python.WHEEL
    fake = tmp_path / "toolchain" / "downloads" / f"{name}-{version}-py3-none-any.whl"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: a wheel, just not that one
    (tmp_path / "out").mkdir()
    with pytest.raises(StubError, match="not the pinned"):
        python._unpack_checked(tmp_path / "out")
    assert not fake.exists() and list((tmp_path / "out").iterdir()) == []
