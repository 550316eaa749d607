"""First-start unpacking of a compressed bundle under faults: killed at random
moments it leaves no corrupt cache (the next start recovers), and a disk too small
gives one clear line and leaves nothing half-written."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROMPT, ROOT, assert_one_line_error, run_cli, run_exe
from runtime.bundle import payload

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def packed(stub, model, tmp_path_factory) -> Path:
    """A compressed bundle of a 36 MB synthetic model (enough bytes for a kill to land mid-unpack)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import make_model

    d = tmp_path_factory.mktemp("packed")
    make_model.write_f32(d / "tiny.gguf", "tiny", vocab_source=model)
    out = d / "tiny"
    run_cli(["build", str(d / "tiny.gguf"), "-o", str(out), "--runtime", str(stub), "--compress",
             "--compress-level", "1"], check=True)  # fmt: skip
    return out


def _cache_state(cache: Path, sha: str) -> tuple[list[str], bool]:
    models = cache / "models"
    names = sorted(p.name for p in models.iterdir()) if models.exists() else []
    final = models / f"{sha}.gguf"
    good = final.exists() and hashlib.sha256(final.read_bytes()).hexdigest() == sha
    return names, good


def _start(packed: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen([str(packed), "-p", PROMPT, "-n", "2", "--cache-dir", str(cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip


def _wait_for_temp(cache: Path, deadline: float) -> None:
    while time.monotonic() < deadline and not list((cache / "models").glob(".*.tmp")):
        time.sleep(0.002)


def test_killed_first_starts_leave_no_corrupt_cache(packed, tmp_path):
    m = payload.read_bundle(str(packed)).model
    rng = random.Random(99)
    outcomes = []
    for i in range(8):
        cache = tmp_path / f"cache{i}"
        proc = _start(packed, cache)
        if i % 2:  # at a random moment of the whole start
            time.sleep(rng.uniform(0.2, 1.5))
        else:  # at a random moment of the unpacking itself
            _wait_for_temp(cache, time.monotonic() + 30)
            time.sleep(rng.uniform(0.0, 0.1))
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its child, wherever they were
        proc.wait()
        names, good = _cache_state(cache, m["sha256"])
        # either no final file yet, or a complete, verified one: never a corrupt one
        assert good or f"{m['sha256']}.gguf" not in names, names
        outcomes.append("done" if good else "mid-unpack" if any(n.endswith(".tmp") for n in names)
                        else "before")  # fmt: skip
        again = run_exe(packed, "-p", PROMPT, "-n", "2", "--cache-dir", str(cache))
        assert again.returncode == 0, again.stderr
        names, good = _cache_state(cache, m["sha256"])
        assert good and not [n for n in names if n.endswith(".tmp")], names  # recovered, cleaned up
    print(f"\nkilled first starts: {outcomes}")
    assert "mid-unpack" in outcomes


def test_a_disk_too_small_is_one_line_and_leaves_nothing(packed, tmp_path):
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=8m tmpfs {small} && {packed} -p Once -n 2 --cache-dir {small}; "
              f"rc=$?; ls -A {small}/models 2>/dev/null | grep -v '.lock$'; exit $rc")  # fmt: skip
    proc = subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 5
    assert_one_line_error(proc, "not enough free space", "--cache-dir")
    assert proc.stdout.strip() == ""  # no model file, no temporary file
