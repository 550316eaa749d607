"""The Windows bundle under Wine against the Linux bundle, on this machine, in one run.

    .venv/bin/python bench/windows.py [--runs 7] [--model PATH]

Builds (or finds in the cache) three stubs: the Linux one, the Windows one with
our native launcher, and the Windows one as PyInstaller's onefile (what the
launcher replaced), fuses the model into each, and measures

* exec to first token of ``-p`` (16 tokens, greedy), each start from a warm
  runtime cache (the native launcher's first start, which unpacks, is the
  warm-up and is dropped), under one warm wineserver;
* generation speed (``--timings``: tokens/s of the decode steps, 128 tokens).

The three take turns within each run, so what else the machine does falls on
all alike. Prints a Markdown table of medians with min-max.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LLAMABUNDLE = Path(sys.executable).with_name("llamabundle")
MODEL = ROOT.parent / "shared" / "models" / "stories260K.gguf"
PROMPT = "Once upon a time"
TG = re.compile(r"generated (\d+) tokens in [\d.]+ ms \(([\d.]+) t/s\)")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def stub(target_os: str, env: dict) -> Path:
    out = subprocess.run([str(LLAMABUNDLE), "stub", "--os", target_os], stdout=subprocess.PIPE, text=True,
                         env=env, check=True)  # fmt: skip
    return Path(out.stdout.strip().splitlines()[-1])


def fuse(model: Path, stub_path: Path, out: Path) -> Path:
    subprocess.run([str(LLAMABUNDLE), "build", str(model), "-o", str(out), "--runtime", str(stub_path)],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return out


def first_byte(cmd: list[str], env: dict) -> float:
    """Seconds from exec to the first byte on stdout. Wine needs stdin from /dev/null."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         bufsize=0, env=env)  # fmt: skip
    first = p.stdout.read(1)
    dt = time.perf_counter() - t
    p.stdout.read()
    if p.wait() != 0 or not first:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}) or printed nothing")
    return dt


def tokens_per_second(cmd: list[str], env: dict) -> float:
    proc = subprocess.run([*cmd, "--timings"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env)  # fmt: skip
    m = TG.search(proc.stderr)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return float(m[2])


def cell(samples: list[float], fmt: str) -> str:
    return f"{statistics.median(samples):{fmt}} ({min(samples):{fmt}}-{max(samples):{fmt}})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--model", type=Path, default=MODEL)
    args = ap.parse_args()
    from bundler.windows import python  # the Wine prefix the stubs were built with

    env = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="lb-winbench-"))
    env.setdefault("LLAMABUNDLE_CACHE", str(work / "cache"))
    log("stubs: llamabundle stub (linux, windows, windows onefile); the first Windows one takes ~15 min")
    stubs = {"linux": stub("linux", env), "windows": stub("windows", env),
             "windows onefile": stub("windows", {**env, "LLAMABUNDLE_WINDOWS_ONEFILE": "1"})}  # fmt: skip
    wine_cache = "Z:" + str(work / "cache").replace("/", "\\")
    wine_env = {**env, **python.wine_prefix().env, "LLAMABUNDLE_CACHE": wine_cache}
    names = {"linux": "tales", "windows": "tales.exe", "windows onefile": "tales-onefile.exe"}
    bundles = {k: fuse(args.model, s, work / names[k]) for k, s in stubs.items()}
    subprocess.run(["wineserver", "-p"], env=wine_env, check=True)
    subprocess.run(["wine", "cmd", "/c", "exit"], env=wine_env, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    cmds = {k: ([] if k == "linux" else ["wine"]) + [str(b), "-p", PROMPT, "--temp", "0"]
            for k, b in bundles.items()}  # fmt: skip
    envs = {k: env if k == "linux" else wine_env for k in bundles}
    start = {k: [] for k in bundles}
    speed = {k: [] for k in bundles}
    try:
        for i in range(args.runs + 1):
            for k in bundles:
                s = first_byte([*cmds[k], "-n", "16"], envs[k])
                t = tokens_per_second([*cmds[k], "-n", "128"], envs[k])
                if i:  # the first turn warms caches and unpacks the runtime: dropped
                    start[k].append(s)
                    speed[k].append(t)
            log(f"  run {i}/{args.runs}: " + ", ".join(f"{k} {start[k][-1]:.2f} s" for k in bundles if i))
    finally:
        subprocess.run(["wineserver", "-k"], env=wine_env)
    sizes = {k: s.stat().st_size / 2**20 for k, s in stubs.items()}
    print(f"Model: {args.model.name}; {args.runs} runs each (medians, min-max), one warm wineserver.\n")
    print("| bundle | stub | exec to first token | generation, tokens/s | vs Linux |")
    print("|---|---|---|---|---|")
    base = statistics.median(speed["linux"])
    for k in bundles:
        ratio = statistics.median(speed[k]) / base
        print(f"| {k} | {sizes[k]:.1f} MiB | {cell(start[k], '.2f')} s | {cell(speed[k], '.0f')} "
              f"| {ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
