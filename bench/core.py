"""Core figures: stub size, build time, exec to first token, generation speed.

    python bench/core.py [--model PATH ...] [--runs 5]

Builds each model into a bundle with the cached stub and compares it with
llama.cpp's own tools from bench/reference.sh (native build) when present, and
with llama-simple built from the same sources. Prints a markdown table.
Medians over --runs runs, with a warm page cache (one untimed run first).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import LLAMABUNDLE, PROMPT, cached_stub, first_token_seconds, parse_args, timed

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REF = HERE / ".cache" / "llama.cpp" / "bin"


def median(xs):
    return statistics.median(xs)




def our_speed(bundle: Path, n: int, threads: int) -> float:
    out = subprocess.run(
        [str(bundle), "-p", PROMPT, "-n", str(n), "--temp", "0", "--timings", "-t", str(threads)],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    return float(re.search(r"generated \d+ tokens in [\d.]+ ms \(([\d.]+) t/s\)", out).group(1))


def ref_bench(model: Path, n: int, threads: int) -> float | None:
    if not (REF / "llama-bench").exists():
        return None
    out = subprocess.run(
        [str(REF / "llama-bench"), "-m", str(model), "-p", "0", "-n", str(n), "-t", str(threads),
         "-r", "5", "-o", "csv"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    last = out.strip().splitlines()[-1]
    return float(last.split(",")[-2].strip('"'))  # avg_ts


def ref_first_token_seconds(model: Path, threads: int) -> float | None:
    exe = REF / "llama-completion"
    if not exe.exists():
        return None
    cmd = [str(exe), "-m", str(model), "-p", PROMPT, "-n", "16", "--temp", "0", "-t", str(threads),
           "-no-cnv", "--no-display-prompt"]  # fmt: skip
    first_token_seconds(cmd)
    return median([first_token_seconds(cmd) for _ in range(5)])


def main() -> None:
    args = parse_args(__doc__)
    models = args.model
    threads = os.cpu_count() or 1
    stub = cached_stub()
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    print(f"Machine: {cpu}, {threads} threads, {platform.system()} {platform.release()}")
    print(f"Stub: {stub.stat().st_size / 1e6:.1f} MB ({stub})\n")
    print("| model | size | build (cached stub) | cp | exec to first token | ref first token "
          "| gen t/s | ref llama-bench t/s | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            out = Path(tmp) / model.stem
            build = [str(LLAMABUNDLE), "build", str(model), "-o", str(out), "--runtime", str(stub)]
            timed(build)
            t_build = median([timed(build) for _ in range(args.runs)])
            t_cp = median([timed(["cp", str(model), str(Path(tmp) / "copy")]) for _ in range(args.runs)])
            cmd = [str(out), "-p", PROMPT, "-n", "16", "--temp", "0", "-t", str(threads)]
            first_token_seconds(cmd)
            t_first = median([first_token_seconds(cmd) for _ in range(args.runs)])
            our_speed(out, args.n, threads)
            ours = median([our_speed(out, args.n, threads) for _ in range(args.runs)])
            ref = ref_bench(model, args.n, threads)
            ref_first = ref_first_token_seconds(model, threads)
            size = model.stat().st_size
            print(
                f"| {model.name} | {size / 1e6:.1f} MB | {t_build:.2f} s | {t_cp:.2f} s "
                f"| {t_first:.2f} s | {f'{ref_first:.2f} s' if ref_first else 'n/a'} "
                f"| {ours:.1f} | {f'{ref:.1f}' if ref else 'n/a'} "
                f"| {f'{ours / ref:.2f}x' if ref else 'n/a'} |"
            )
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
