"""ggml's Vulkan backend in a real bundle, on Mesa's software Vulkan driver (lavapipe), the
GPU this machine has: every layer offloaded when asked, the same greedy text as the CPU,
never picked by --gpu auto, and a clear line, never a hang, when Vulkan cannot run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import PROMPT, Served, run_exe

pytestmark = pytest.mark.e2e

LVP_ICD = "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"
SHADER_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llamabundle-test-mesa-shaders"
)


@pytest.fixture(scope="module")
def lavapipe() -> dict:
    """The environment that shows lavapipe to ggml (which skips CPU-type devices unless
    GGML_VK_VISIBLE_DEVICES names them), with Mesa's shader cache kept between runs."""
    if not Path(LVP_ICD).exists() or not shutil.which("vulkaninfo"):
        pytest.fail("Mesa's lavapipe is missing: run ./install.sh (mesa-vulkan-drivers, vulkan-tools)")
    return {
        "VK_ICD_FILENAMES": LVP_ICD,
        "GGML_VK_VISIBLE_DEVICES": "0",
        "MESA_SHADER_CACHE_DIR": str(SHADER_CACHE),
    }


def gpu_info(bundle, *args, env=None) -> dict:
    proc = run_exe(bundle, "--info", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["hardware"]["gpu"]


def test_every_layer_on_lavapipe_gives_the_cpu_s_text(bundle, lavapipe):
    args = ("-p", PROMPT, "--raw", "-n", "48", "--temp", "0")
    cpu = run_exe(bundle, *args, "--gpu", "cpu")
    gpu = run_exe(bundle, *args, "--gpu", "vulkan", "-ngl", "99", "-v", env=lavapipe, timeout=600)
    assert cpu.returncode == 0 and gpu.returncode == 0, gpu.stderr[-2000:]
    assert "offloaded 6/6 layers to GPU" in gpu.stderr  # llama.cpp's own report
    assert gpu.stdout == cpu.stdout and len(cpu.stdout.split()) > 10
    info = gpu_info(bundle, "--gpu", "vulkan", "-ngl", "99", env=lavapipe)
    assert (info["device"], info["layers"], info["layer_count"]) == ("Vulkan0", 99, 5)
    assert [d["type"] for d in info["vulkan"]] == ["cpu"] and "llvmpipe" in info["why"]


def test_auto_stays_on_the_cpu_and_says_why(bundle, lavapipe):
    for env in (lavapipe, {"VK_ICD_FILENAMES": LVP_ICD}):  # visible to ggml or not
        info = gpu_info(bundle, env=env)
        assert info["layers"] == 0 and info["device"] is None and "CPU renderer" in info["why"], info
    out = run_exe(bundle, "--info", env=lavapipe).stdout
    assert "llvmpipe" in out and "using   the CPU (llvmpipe" in out, out
    proc = run_exe(bundle, "-p", PROMPT, "-n", "4", "-ngl", "99", env=lavapipe)
    assert proc.returncode == 0 and proc.stderr.startswith("running on the CPU: llvmpipe")


def _system_loader() -> Path:
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    line = next((x for x in out.splitlines() if x.strip().startswith("libvulkan.so.1 ")), "")
    assert "=>" in line, "no system libvulkan.so.1 to hide"
    return Path(line.split("=>", 1)[1].strip()).resolve()


@pytest.mark.parametrize("broken", ["no loader", "no driver"])
def test_without_a_loader_or_a_driver_the_cpu_runs_with_one_line(bundle, broken):
    if broken == "no driver":
        env, prefix = {"VK_ICD_FILENAMES": "/nonexistent/icd.json"}, []
        needle = "no Vulkan driver (ICD) is installed"
    else:  # hide the system's loader in a private mount namespace (an empty file in its place)
        if os.geteuid() != 0 or not shutil.which("unshare"):
            pytest.fail("this test hides libvulkan with a private mount: it needs root and unshare")
        script = f'mount --bind /dev/null "{_system_loader()}" && exec "$@"'
        env, prefix = {}, ["unshare", "-m", "sh", "-c", script, "sh"]
        needle = "no Vulkan loader (libvulkan) is installed"

    def run(*args):
        cmd = [*prefix, str(bundle), "-p", PROMPT, "--raw", "-n", "16", "--temp", "0", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **env})

    proc, cpu = run("-ngl", "99"), run("--gpu", "cpu")
    assert proc.returncode == 0 and proc.stdout == cpu.stdout and cpu.stderr == ""
    assert proc.stderr == f"running on the CPU: {needle}\n"
    refused = run("--gpu", "vulkan")
    assert refused.returncode == 5 and refused.stderr.strip().endswith(f"--gpu vulkan: {needle}"), (
        refused.stderr
    )


def test_the_server_answers_with_every_layer_on_the_device(bundle, lavapipe):
    s = Served(bundle, "--gpu", "vulkan", "--temp", "0", env=lavapipe)
    try:
        health = s.wait_ready(timeout=600)
        assert health["device"].startswith("llvmpipe") and health["gpu_layers"] == 999
        body = json.dumps({"prompt": PROMPT, "n_predict": 24}).encode()
        req = urllib.request.Request(s.url + "/completion", body, {"Content-Type": "application/json"})
        text = json.loads(urllib.request.urlopen(req, timeout=300).read())["content"]
        props = json.loads(urllib.request.urlopen(s.url + "/props", timeout=30).read())
        assert props["device"] == health["device"] and "--gpu vulkan" in props["device_why"]
    finally:
        s.stop()
    cpu = run_exe(bundle, "-p", PROMPT, "--raw", "-n", "24", "--temp", "0", "--gpu", "cpu")
    assert text == cpu.stdout.rstrip("\n") or cpu.stdout.startswith(text)


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=600).read())


def test_smollm2_top_tokens_agree_with_the_cpu(chat_bundle, lavapipe):
    """Quantized models differ in the last bits between backends (and between CPU variants),
    so greedy texts may part at a near-tie. This compares the most likely next tokens step by
    step on the same context (the CPU's greedy text, fed to both), with a tolerance."""
    steps = {}
    for mode, env in (("cpu", {}), ("vulkan", lavapipe)):
        s = Served(chat_bundle, "--gpu", mode, env=env)
        try:
            s.wait_ready(timeout=600)
            if mode == "cpu":
                prompt = _post(s.url, "/tokenize", {"content": "The capital of France is"})["tokens"]
                text = _post(s.url, "/completion", {"prompt": prompt, "n_predict": 16, "temperature": 0,
                                                    "return_tokens": True})["tokens"]  # fmt: skip
            steps[mode] = [
                _post(s.url, "/completion", {"prompt": prompt + text[:k], "n_predict": 1, "temperature": 0,
                                             "n_probs": 3})["completion_probabilities"][0]
                for k in range(len(text))
            ]  # fmt: skip
        finally:
            s.stop()
    agree = 0
    for a, b in zip(steps["cpu"], steps["vulkan"], strict=True):
        assert a["id"] in {t["id"] for t in b["top_logprobs"]}  # never far apart
        if a["id"] == b["id"]:
            agree += 1
            assert a["logprob"] == pytest.approx(b["logprob"], abs=0.15)
    assert agree >= len(steps["cpu"]) - 2, steps
