"""End to end: a real executable built from stories260K, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PROMPT, assert_one_line_error, run_exe
from runtime.bundle import payload

pytestmark = pytest.mark.e2e

SHA = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"


def complete(bundle, *args, **kw):
    proc = run_exe(bundle, "-p", PROMPT, "--temp", "0", *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_prompt_prints_only_the_completion(bundle):
    proc = complete(bundle, "-n", "64")
    assert proc.stderr == ""  # quiet by default
    text = proc.stdout
    assert text.endswith("\n") and len(text.split()) > 20
    assert not text.startswith(PROMPT)
    assert complete(bundle, "-n", "64").stdout == text  # greedy is deterministic


def test_settings_from_the_environment(bundle):
    greedy = complete(bundle, "-n", "24").stdout
    proc = run_exe(bundle, "-p", PROMPT, "-n", "24", env={"LLAMABUNDLE_TEMP": "0"})
    assert proc.returncode == 0 and proc.stdout == greedy
    info = json.loads(run_exe(bundle, "--info", "--json", "--temp", "0.5",
                              env={"LLAMABUNDLE_TOP_K": "5"}).stdout)  # fmt: skip
    assert info["settings"]["temp"] == {"value": 0.5, "source": "flag"}
    assert info["settings"]["top_k"] == {"value": 5, "source": "env"}
    assert info["settings"]["top_p"]["source"] == "default"


def test_sampling_with_a_seed_is_repeatable(bundle):
    args = ("-p", PROMPT, "-n", "24", "--temp", "0.9", "--seed", "42")
    a, b = run_exe(bundle, *args), run_exe(bundle, *args)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.strip()


def test_cli_chat_transcript(bundle):
    first = complete(bundle, "-n", "16").stdout
    proc = run_exe(bundle, "--cli", "--temp", "0", "-n", "16",
                   input=f"{PROMPT}\n/clear\n{PROMPT}\n/bye\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"> {first}> > {first}> "
    assert proc.stderr.count("no chat template") == 1


def test_cli_ends_on_end_of_input(bundle):
    proc = run_exe(bundle, "--cli", "--temp", "0", "-n", "8", input="")
    assert proc.returncode == 0 and proc.stdout == "> \n"


def test_plain_run_serves_the_web_chat(bundle):
    proc = subprocess.Popen([str(bundle), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "DISPLAY": ""})  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving stories260K.gguf at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_info(bundle):
    proc = run_exe(bundle, "--info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("stories260K.gguf", "llama", "no chat template", "CPU", "variant", "temp"):
        assert needle in out, out
    data = json.loads(run_exe(bundle, "--info", "--json").stdout)
    assert data["manifest"]["model"]["sha256"] == SHA
    ggml = data["hardware"]["ggml"]
    assert ggml["cpu_variant"] and ggml["cpu_variant"] in out
    assert any(d["type"] == "cpu" for d in ggml["devices"])
    assert ggml["gpu_layers"] == 0  # no GPU on this machine: CPU, silently
    flags = set(data["hardware"]["cpu"]["flags"])
    if "avx2" in flags and "avx512f" not in flags:
        assert ggml["cpu_variant"] in ("haswell", "zen", "alderlake")


def test_gpu_layers_without_a_gpu_fall_back_with_one_line(bundle):
    proc = run_exe(bundle, "-p", PROMPT, "-n", "8", "--temp", "0", "-ngl", "10")
    assert proc.returncode == 0 and proc.stdout.strip()
    # One line that says why (here: Mesa's lavapipe, a CPU renderer, is the only Vulkan device).
    assert proc.stderr.startswith("running on the CPU: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_version_and_help(bundle):
    v = run_exe(bundle, "--version")
    assert v.returncode == 0 and "llamabundle runtime" in v.stdout
    h = run_exe(bundle, "--help")
    assert h.returncode == 0 and "--cli" in h.stdout and "LLAMABUNDLE_" in h.stdout


def test_bad_flag_is_one_line(bundle):
    assert_one_line_error(run_exe(bundle, "--temp", "hot"), "--temp", "--help")
    assert_one_line_error(run_exe(bundle, "-p", "x", "--top-p", "3"), "top_p", "between 0 and 1")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def test_weights_are_mapped_from_the_executable_not_copied(bundle, tmp_path):
    """While the model is loaded, the bundle itself is mmapped at the model's
    offset and no GGUF exists anywhere in the temp or cache directories."""
    manifest = payload.read_bundle(str(bundle)).manifest
    proc = subprocess.Popen(
        [str(bundle), "--cli", "--temp", "0", "-n", "8"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        proc.stdin.write(PROMPT + "\n")
        proc.stdin.flush()
        assert proc.stdout.read(2) == "> "
        assert proc.stdout.readline().strip()  # a reply: the model is loaded and ran
        pids = [proc.pid] + _children(proc.pid)
        maps = "".join(Path(f"/proc/{p}/maps").read_text() for p in pids)
        regions = []
        for line in maps.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and os.path.realpath(parts[5]) == os.path.realpath(bundle):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                regions.append((int(parts[2], 16), hi - lo))
        model = manifest["model"]
        assert any(
            off <= model["offset"] + model["header_size"] and off + size >= model["offset"] + model["size"]
            for off, size in regions
        ), f"model bytes not mapped from {bundle}: {regions}"
        for root in (Path(os.environ["TMPDIR"]), Path(os.environ["XDG_CACHE_HOME"]), tmp_path):
            for p in root.rglob("*"):
                if p.is_file():
                    assert p.suffix != ".gguf", p
                    with open(p, "rb") as f:
                        assert f.read(4) != b"GGUF", p
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "damage, needle",
    [
        ("truncate", "cut short"),
        ("manifest", "damaged manifest"),
        ("header", "damaged model header"),
    ],
)
def test_damaged_bundle_refuses_to_start(bundle, tmp_path, damage, needle):
    bad = tmp_path / "tales"
    shutil.copy(bundle, bad)
    b = payload.read_bundle(str(bad))
    data = bytearray(bad.read_bytes())
    if damage == "truncate":
        data = data[: b.model["offset"] + b.model["size"] // 2]
    elif damage == "manifest":
        m_off = payload.TRAILER.unpack(data[-payload.TRAILER.size :])[5]
        data[m_off + 5] ^= 0x20
    else:
        data[b.model["offset"] + 64] ^= 0x01
    bad.write_bytes(data)
    start = time.monotonic()
    proc = run_exe(bad, "-p", PROMPT, "-n", "4")
    assert_one_line_error(proc, needle)
    assert proc.returncode == 3
    assert time.monotonic() - start < 60
