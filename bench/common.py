"""What the bench scripts share: their command line and the cached runtime stub."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMABUNDLE = Path(sys.executable).with_name("llamabundle")
PROMPT = "Once upon a time"
DEFAULT_MODEL = HERE.parent.parent / "shared" / "models" / "stories260K.gguf"


def parse_args(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", type=Path, help="a GGUF (repeatable)")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (the median is shown)")
    ap.add_argument("-n", type=int, default=128, help="tokens to generate")
    args = ap.parse_args()
    args.model = args.model or [DEFAULT_MODEL]
    return args


def cached_stub() -> Path:
    """This machine's runtime stub, built by `llamabundle stub` if it is not cached."""
    out = subprocess.run([str(LLAMABUNDLE), "stub"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def timed(cmd) -> float:
    """Seconds a command takes to run to its end."""
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def first_token_seconds(cmd) -> float:
    """Seconds from exec to the first byte the command prints (the first token for -p)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdout.read(1)
    dt = time.perf_counter() - t
    p.stdout.read()
    p.wait()
    return dt
