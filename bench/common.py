"""What the bench scripts share: their command line and the cached runtime stub."""

from __future__ import annotations

import argparse
import subprocess
import sys
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
