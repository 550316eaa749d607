"""Old CPUs under emulation. qemu-user emulates CPUID (not /proc/cpuinfo), and does
not follow an execve; so a private binfmt_misc rule (in a user namespace) runs every
exec of a `*.CPU` file under `qemu-x86_64 -cpu CPU`. The native launcher is plain
x86-64 code that only unpacks and execs, so the test runs what it unpacked, the
runtime (whose PyInstaller bootloader re-execs itself), as a `*.CPU` file beside its
`_internal` folder, as the launcher would. The variant --info reports shows what ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PROMPT, run_exe
from runtime.bundle import payload

pytestmark = pytest.mark.e2e

# emulated CPU -> the ggml CPU variant it must load
CPUS = {"Nehalem": "sse42", "qemu64": "x64"}


@pytest.fixture(scope="module")
def emulate(tmp_path_factory):
    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        pytest.skip("qemu-user is not installed (install.sh installs Debian's qemu-user)")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"],
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode:
        pytest.skip(f"no private binfmt_misc here: {probe.stderr.strip()}")
    d = tmp_path_factory.mktemp("qemu")

    def run(bundle: Path, cpu: str, *args: str) -> subprocess.CompletedProcess:
        wrapper = d / f"wrap-{cpu}"
        wrapper.write_text(f'#!/bin/sh\nexec {qemu} -cpu {cpu} "$@"\n')
        wrapper.chmod(0o755)
        exe = d / f"runtime-{cpu}" / f"{payload.RUNTIME_EXE}.{cpu.lower()}"
        if not exe.exists():
            assert run_exe(bundle, "--version").returncode == 0  # the launcher unpacks the runtime
            [unpacked] = (Path(os.environ[payload.CACHE_ENV]) / "runtime").iterdir()
            shutil.copytree(unpacked, exe.parent, symlinks=True)
            shutil.copy(exe.parent / payload.RUNTIME_EXE, exe)
        rule = f":{cpu.lower()}:E::{cpu.lower()}::{wrapper}:"
        script = ("mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && "
                  f"echo '{rule}' > /proc/sys/fs/binfmt_misc/register && exec \"$0\" \"$@\"")  # fmt: skip
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                               str(exe), *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, payload.LAUNCHER_ENV: str(bundle)})  # fmt: skip

    return run


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_old_cpu_loads_its_variant_and_completes(bundle, emulate, cpu):
    native = json.loads(run_exe(bundle, "--info", "--json").stdout)["hardware"]["ggml"]["cpu_variant"]
    info = emulate(bundle, cpu, "--info", "--json")
    assert info.returncode == 0, info.stderr
    variant = json.loads(info.stdout)["hardware"]["ggml"]["cpu_variant"]
    assert variant == CPUS[cpu] != native
    proc = emulate(bundle, cpu, "-p", PROMPT, "-n", "8", "--temp", "0")
    assert proc.returncode == 0 and len(proc.stdout.split()) >= 3, proc.stderr
    print(f"\n{cpu}: ggml variant {variant} (native: {native}); {proc.stdout.strip()!r}")
