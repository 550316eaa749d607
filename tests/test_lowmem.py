"""Little memory: under a real memory limit (a cgroup made by the test), a context
that cannot fit is refused with one line before loading, never by the OOM killer."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PROMPT, assert_one_line_error

pytestmark = pytest.mark.e2e
LIMIT = 400 << 20


@pytest.fixture
def cgroup():
    """A memory cgroup limited to LIMIT bytes (v1 or v2), or a skip saying why not."""
    name = f"llamabundle-test-{os.getpid()}"
    v1 = Path("/sys/fs/cgroup/memory")
    path, limit_file = (v1 / name, "memory.limit_in_bytes") if v1.is_dir() else (
        Path("/sys/fs/cgroup") / name, "memory.max")  # fmt: skip
    try:
        path.mkdir()
        (path / limit_file).write_text(str(LIMIT))
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here ({e.strerror}); needs root and cgroup access")
    yield path
    for _ in range(50):  # the kernel lets go of a cgroup shortly after its last process exits
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.1)


def run_limited(cgroup: Path, *cmd) -> subprocess.CompletedProcess:
    def enter():
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.run([str(c) for c in cmd], preexec_fn=enter, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_context_too_big_for_the_limit_is_refused_in_one_line(bundle, cgroup):
    ok = run_limited(cgroup, bundle, "-p", PROMPT, "-n", "8", "--temp", "0")
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    # 4M tokens of context cache is about 2.5 GB: far over the 400 MiB limit
    proc = run_limited(cgroup, bundle, "-p", PROMPT, "-n", "8", "--ctx-size", "4000000")
    assert proc.returncode == 5, (proc.returncode, proc.stderr)  # not -9: not killed
    assert_one_line_error(proc, "needs about", "MiB is available", "try --ctx-size")


def test_info_reports_the_limit(bundle, cgroup):
    proc = run_limited(cgroup, bundle, "--info", "--json")
    mem = json.loads(proc.stdout)["hardware"]["memory"]
    assert 0 < mem["available"] <= LIMIT and mem["cgroup_available"] <= LIMIT
