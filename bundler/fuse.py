"""Fuse a runtime stub and a GGUF model into one executable.

A pure byte operation: any stub (built here or on another OS) plus any GGUF.
The output is written to a temporary file beside the target and renamed into
place only when complete, so a failure never leaves a half-written bundle.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import runtime
from runtime import payload

from . import gguf_info
from .errors import InputError, OutputError
from .stub import executable_kind

CHUNK = 8 << 20


@dataclass(frozen=True)
class Result:
    path: Path
    size: int
    sha256: str
    manifest: dict


def stub_bytes_len(stub: Path) -> int:
    """Length of the bare stub: an already-fused bundle contributes only its stub part."""
    try:
        with open(stub, "rb") as f:
            if payload.has_payload(f):
                return payload.read_bundle(str(stub), check_header=False).payload_start
            return f.seek(0, os.SEEK_END)
    except runtime.errors.PayloadError as e:
        raise InputError(f"runtime stub {stub} carries a damaged payload: {e}") from None


def check_output(model: Path, out: Path) -> None:
    if out.exists() and out.is_dir():
        raise OutputError(f"{out} is a directory; give a file name for the executable")
    if out.exists() and model.exists() and os.path.samefile(model, out):
        raise OutputError(f"output {out} is the input model; choose another output path")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {out}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {out}: directory {parent} is not writable")


def fuse(stub: Path, model: Path, out: Path, *, settings: dict | None = None, progress=None) -> Result:
    """Write ``out`` = stub + aligned model + manifest + trailer; return what was written.

    ``progress(n_bytes)`` is called as model bytes are copied.
    """
    stub, model, out = Path(stub), Path(model), Path(out)
    check_output(model, out)
    described = gguf_info.describe(str(model))
    kind = executable_kind(stub)
    stub_len = stub_bytes_len(stub)
    source_date_epoch = os.environ.get("SOURCE_DATE_EPOCH")

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as raw_dst:
            dst = _HashingWriter(raw_dst)
            stub_sha = _copy(stub, dst, stub_len, hashlib.sha256())
            offset = payload.align_up(stub_len)
            dst.write(b"\0" * (offset - stub_len))
            header = hashlib.sha256()
            model_sha = _copy(model, dst, described["size"], hashlib.sha256(), header,
                              described["header_size"], progress)  # fmt: skip
            model_entry = {
                "name": model.name,
                "offset": offset,
                "size": described["size"],
                "sha256": model_sha,
                "header_size": described["header_size"],
                "header_sha256": header.hexdigest(),
                "gguf": described["gguf"],
            }
            baked = dict(sorted((settings or {}).items()))
            build_id = hashlib.sha256(
                payload.encode_manifest({"stub": stub_sha, "model": model_sha, "settings": baked})
            ).hexdigest()[:16]
            manifest = {
                "schema": payload.MANIFEST_SCHEMA,
                "build": {
                    "llamabundle": runtime.__version__,
                    "build_id": build_id,
                    "source_date_epoch": int(source_date_epoch) if source_date_epoch else None,
                },
                "stub": {**kind, "size": stub_len, "sha256": stub_sha},
                "model": model_entry,
                "settings": baked,
            }
            raw = payload.encode_manifest(manifest)
            m_off = raw_dst.tell()
            dst.write(raw)
            dst.write(payload.encode_trailer(stub_len, m_off, raw))
            raw_dst.flush()
            os.fsync(raw_dst.fileno())
            size, out_sha = raw_dst.tell(), dst.digest.hexdigest()
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    except OSError as e:
        _unlink(tmp)
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return Result(path=out, size=size, sha256=out_sha, manifest=manifest)


class _HashingWriter:
    """Writes through to a file and hashes every byte, so the bundle's own sha256
    comes out of the single pass that writes it."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data) -> None:
        self.digest.update(data)
        self.f.write(data)


def _copy(src: Path, dst, length: int, digest, head=None, head_len=0, progress=None) -> str:
    """Copy the first ``length`` bytes of ``src`` into ``dst``, hashing them on the way."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left, done = length, 0
    try:
        f = open(src, "rb")
    except OSError as e:
        raise InputError(f"cannot read {src}: {e.strerror}") from None
    with f:
        while left:
            n = f.readinto(view[: min(CHUNK, left)])
            if not n:
                raise InputError(f"{src} changed while it was being read; try again")
            chunk = view[:n]
            digest.update(chunk)
            if head is not None and done < head_len:
                head.update(chunk[: head_len - done])
            dst.write(chunk)
            left -= n
            done += n
            if progress:
                progress(n)
    return digest.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
