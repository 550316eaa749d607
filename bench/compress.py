"""Is --compress worth it? Size saved against first-start cost, per weight type.

    python bench/compress.py [--model PATH ...] [--runs 3] [--level 9]

For each model: build it plain and with --compress (cached stub), then time
exec to first token for the plain bundle, for the compressed bundle's first
start (empty cache: it unpacks the model) and for its later starts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import LLAMABUNDLE, PROMPT, cached_stub, first_token_seconds, parse_args, timed


def main() -> None:
    args = parse_args(__doc__)
    stub = str(cached_stub())
    print("| model | size | compressed | ratio | build plain | build --compress | start plain "
          "| first start compressed | later start compressed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.model:
        with tempfile.TemporaryDirectory() as tmp:
            plain, packed = Path(tmp) / "plain", Path(tmp) / "packed"
            build = [str(LLAMABUNDLE), "build", str(model), "--runtime", stub]
            t_plain = statistics.median(timed([*build, "-o", str(plain)]) for _ in range(args.runs))
            t_packed = statistics.median(
                timed([*build, "-o", str(packed), "--compress"]) for _ in range(args.runs)
            )
            info = subprocess.run([str(LLAMABUNDLE), "inspect", str(packed), "--json"], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            m = json.loads(info)["model"]
            q = ["-p", PROMPT, "-n", "4", "--temp", "0"]
            first_token_seconds([str(plain), *q])
            s_plain = statistics.median(first_token_seconds([str(plain), *q]) for _ in range(args.runs))
            firsts, laters = [], []
            for i in range(args.runs):
                cache = Path(tmp) / f"cache{i}"
                firsts.append(first_token_seconds([str(packed), *q, "--cache-dir", str(cache)]))
                laters.append(first_token_seconds([str(packed), *q, "--cache-dir", str(cache)]))
            ratio = m["stored_size"] / m["size"]
            print(f"| {model.name} | {m['size'] / 1e6:.1f} MB | {m['stored_size'] / 1e6:.1f} MB "
                  f"| {ratio:.1%} | {t_plain:.2f} s | {t_packed:.2f} s | {s_plain:.2f} s "
                  f"| {statistics.median(firsts):.2f} s | {statistics.median(laters):.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
