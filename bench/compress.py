"""Is --compress worth it? Size saved against first-start cost, per weight type.
(bench/run.py times `build --compress`; this adds what a compressed bundle costs at start.)

    python bench/compress.py --model M.gguf [--model ...] [--runs 3] [--level 9]

For each model: build it plain and with --compress (cached stub), then time exec to
first token for the plain bundle, for the compressed bundle's first start (empty
cache: it unpacks the model) and for its later starts. Medians over --runs runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from harness import LLAMABUNDLE, SHORT_PROMPT, STORIES, ensure_stub
from measure import first_byte, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", type=Path, help="a GGUF (repeatable; default stories260K)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--level", type=int, default=9, help="--compress-level")
    args = ap.parse_args()
    stub = str(ensure_stub())
    med = statistics.median
    print(
        "| model | size | compressed | ratio | build plain | build --compress | start plain "
        "| first start compressed | later start compressed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.model or [STORIES]:
        with tempfile.TemporaryDirectory() as tmp:
            plain, packed = Path(tmp) / "plain", Path(tmp) / "packed"
            build = [str(LLAMABUNDLE), "build", str(model), "--runtime", stub]
            t_plain = med(wall([*build, "-o", str(plain)]) for _ in range(args.runs))
            packing = [*build, "-o", str(packed), "--compress", "--compress-level", str(args.level)]
            t_packed = med(wall(packing) for _ in range(args.runs))
            info = subprocess.run([str(LLAMABUNDLE), "inspect", str(packed), "--json"], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            m = json.loads(info)["model"]
            q = ["-p", SHORT_PROMPT, "-n", "4", "--temp", "0"]
            first_byte([str(plain), *q])
            s_plain = med(first_byte([str(plain), *q])[0] for _ in range(args.runs))
            firsts, laters = [], []
            for i in range(args.runs):
                cache = Path(tmp) / f"cache{i}"
                firsts.append(first_byte([str(packed), *q, "--cache-dir", str(cache)])[0])
                laters.append(first_byte([str(packed), *q, "--cache-dir", str(cache)])[0])
            ratio = m["stored_size"] / m["size"]
            print(f"| {model.name} | {m['size'] / 1e6:.1f} MB | {m['stored_size'] / 1e6:.1f} MB "
                  f"| {ratio:.1%} | {t_plain:.2f} s | {t_packed:.2f} s | {s_plain:.2f} s "
                  f"| {med(firsts):.2f} s | {med(laters):.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
