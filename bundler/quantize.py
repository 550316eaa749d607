"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``)."""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from pathlib import Path

from runtime.llama import backend

from . import gguf_info
from .errors import InputError, OutputError

# The llama.cpp file types that need no importance matrix, by their usual names.
TYPES = {
    "F32": 0, "F16": 1, "BF16": 32, "Q8_0": 7, "Q6_K": 18,
    "Q5_0": 8, "Q5_1": 9, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q4_0": 2, "Q4_1": 3, "Q4_K_S": 14, "Q4_K_M": 15, "IQ4_NL": 25, "IQ4_XS": 30,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q2_K": 10,
}  # fmt: skip
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")


def check_type(qtype: str) -> str:
    name = qtype.upper()
    if name not in TYPES:
        raise InputError(f"unknown quantization type {qtype!r}; valid types: {', '.join(TYPES)}")
    return name


def quantize(src: Path, dst: Path, qtype: str, progress=None) -> None:
    """Write ``dst``, the quantized ``src``; ``progress(done, total)`` counts tensors."""
    name = check_type(qtype)
    described = gguf_info.describe(str(src))
    if dst.exists() and os.path.samefile(src, dst):
        raise OutputError(f"output {dst} is the input model; choose another output path")
    if not dst.parent.is_dir():
        raise OutputError(f"cannot write {dst}: directory {dst.parent} does not exist; create it first")
    backend.init()
    C = backend.bindings()
    total = described["gguf"]["tensor_count"]

    def on_log(line: str) -> None:
        m = _TENSOR_LINE.search(line)
        if m and progress:
            progress(int(m.group(1)), total)

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".part", dir=dst.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write {dst}: {e.strerror}") from None
    params = C.llama_model_quantize_default_params()
    params.ftype = TYPES[name]
    params.nthread = 0  # all cores
    try:
        with backend.log_listener(on_log):
            rc = C.llama_model_quantize(str(src).encode(), tmp.encode(), ctypes.byref(params))
        if rc != 0:
            last = backend.recent_logs().splitlines()[-1:] or ["unknown error"]
            raise InputError(f"llama.cpp could not quantize {src.name} to {name}: {last[0]}")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
