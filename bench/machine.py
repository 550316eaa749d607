"""What the results were measured on, and how busy the machine was meanwhile."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path

FLAG_NAMES = [("sse4_2", "SSE4.2"), ("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"), ("f16c", "F16C"),
              ("avx512f", "AVX-512F"), ("avx512bw", "AVX-512BW"), ("avx512vl", "AVX-512VL"),
              ("avx512_vnni", "AVX-512VNNI"), ("avx512_bf16", "AVX-512BF16"), ("avx_vnni", "AVX-VNNI"),
              ("amx_tile", "AMX")]  # fmt: skip


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, flags


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def bundle_info(bundle: Path) -> dict:
    out = subprocess.run([str(bundle), "--info", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def ref_build(bench_exe: Path, model: Path) -> dict:
    """The reference's build id and CPU, from a one-token llama-bench run."""
    out = subprocess.run([str(bench_exe), "-m", str(model), "-p", "1", "-n", "0", "-r", "1", "-o", "json"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(out.stdout)[0]


def _git() -> str:
    def git(*args):
        here = Path(__file__).parent
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    # the results of an earlier run are not a change to what is measured
    dirty = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines()
             if not ln[3:].startswith("bench/RESULTS.")]  # fmt: skip
    return head + (" with uncommitted changes" if dirty else "")


def describe(info: dict, ref: dict, threads: int, ctx: int) -> dict:
    """The header of RESULTS.md, as ordered label: value pairs."""
    model, flags = _cpuinfo()
    cpu = info["hardware"]["cpu"]
    ggml = info["hardware"]["ggml"]
    have = [name for flag, name in FLAG_NAMES if flag in flags]
    return {
        "Date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{model or cpu.get('model')}, {cpu['physical_cores']} physical cores "
               f"({cpu['logical_cores']} logical)",
        "CPU flags": ", ".join(have) or "none of note",
        "Memory": f"{_mem_total() / 2**30:.1f} GiB",
        "Kernel": f"{platform.system()} {platform.release()}",
        "Ours": f"llamabundle (git {_git()}), llama-cpp-python {version('llama_cpp_python')}, "
                f"portable build; ggml CPU variant loaded: `{ggml.get('cpu_variant')}`",
        "Reference": f"llama.cpp {ref.get('build_commit')} (the sources vendored in llama-cpp-python "
                     f"{version('llama_cpp_python')}), built by bench/reference.sh with GGML_NATIVE=ON",
        "Threads": f"{threads} for every process of both sides (`-t {threads}`; ours defaults to "
                   f"the physical cores, {cpu['physical_cores']} here)",
        "Context": f"{ctx} tokens for both sides (`-c {ctx}`), KV cache f16, flash attention `auto`",
        "Python": platform.python_version(),
    }  # fmt: skip


def _live_descendants_cpu(hz: int) -> float:
    """CPU seconds of this process's descendants that are still running (a server under
    test); with their own reaped children's."""
    total, stack = 0.0, [os.getpid()]
    while stack:
        pid = stack.pop()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    stack += [int(c) for c in f.read().split()]
            if pid != os.getpid():
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += sum(int(x) for x in fields[11:15]) / hz  # utime stime cutime cstime
        except (OSError, ValueError):
            continue
    return total


class CpuWatch:
    """How much CPU went to processes that were not ours while a row ran: all busy
    time in /proc/stat minus the CPU time of this process and of its descendants,
    reaped or still running."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + fields[4]
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system + _live_descendants_cpu(hz)
        return sum(fields[:8]) / hz, (sum(fields[:8]) - idle) / hz, ours

    def foreign(self) -> float:
        """The share of the machine's CPU time used by others since the start (0..1)."""
        total0, busy0, ours0 = self.start
        total1, busy1, ours1 = self._sample()
        if total1 <= total0:
            return 0.0
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (total1 - total0)
