"""Build and verify a bundle of a model over 1 GB, against cp of the same file.

    python bench/make_model.py --preset 500m --types F32
    python bench/large.py --model bench/.cache/models/synthetic-500m-F32.gguf [--runs 3]
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import LLAMABUNDLE, PROMPT, cached_stub, parse_args, timed


def main() -> None:
    args = parse_args(__doc__)
    stub = str(cached_stub())
    rows = []
    for model in args.model:
        with tempfile.TemporaryDirectory(dir=model.parent) as tmp:
            out = Path(tmp) / "chat"
            med = lambda cmd: statistics.median(timed(cmd) for _ in range(args.runs))  # noqa: E731
            rows.append((model.name, model.stat().st_size / 1e9, {
                "cp": med(["cp", str(model), str(Path(tmp) / "copy")]),
                "build": med([str(LLAMABUNDLE), "build", str(model), "-o", str(out), "--runtime", stub]),
                "build --split": med([str(LLAMABUNDLE), "build", str(model), "-o", str(Path(tmp) / "s"),
                                      "--runtime", stub, "--split", "--split-size", "512M"]),
                "llamabundle verify": med([str(LLAMABUNDLE), "verify", str(out)]),
                "./chat --verify": med([str(out), "--verify"]),
                "./chat -p (4 tokens)": med([str(out), "-p", PROMPT, "-n", "4"]),
            }))  # fmt: skip
    for name, gb, times in rows:
        print(f"{name} ({gb:.2f} GB), medians of {args.runs} runs, warm page cache:")
        for what, secs in times.items():
            print(f"  {what:<22} {secs:6.2f} s  ({gb / secs:.2f} GB/s)" if what != "./chat -p (4 tokens)"
                  else f"  {what:<22} {secs:6.2f} s")  # fmt: skip
        print(f"  build / cp: {times['build'] / times['cp']:.2f}x")


if __name__ == "__main__":
    main()
