"""Fuse a runtime stub and a GGUF model into one executable.

A pure byte operation: any stub (built here or on another OS) plus any GGUF.
The output is written to a temporary file beside the target and renamed into
place only when complete, so a failure never leaves a half-written bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import runtime
from runtime.bundle import payload

from . import gguf_info
from .copying import HashingWriter, copy_hashed, copy_model
from .errors import InputError, OutputError
from .onefile_cookie import cookie_tail
from .split import write_parts
from .stub import executable_kind


@dataclass(frozen=True)
class Result:
    path: Path
    size: int
    build_id: str  # a content hash of stub, model and settings (runtime/bundle/payload.py)
    manifest: dict
    notes: tuple = ()


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


def fuse(
    stub: Path,
    model: Path,
    out: Path,
    *,
    settings: dict | None = None,
    compress_level: int | None = None,
    split_size: int | None = None,
    progress=None,
    described: dict | None = None,
    model_hash=None,
) -> Result:
    """Write ``out`` = stub + stored model + manifest + trailer; return what was written.

    The model is stored as it is (mapped in place at run time), compressed with
    zstandard (``compress_level``), or as GGUF shards beside ``out`` (``split_size``).
    ``progress(n_bytes)`` is called as model bytes are read. ``described`` is
    ``gguf_info.describe(model)`` when the caller already has it, and ``model_hash``
    a ``copying.ModelHash`` of ``model`` already under way.
    """
    stub, model, out = Path(stub), Path(model), Path(out)
    check_output(model, out)
    described = described or gguf_info.describe(str(model))
    kind = executable_kind(stub)
    stub_len = stub_bytes_len(stub)
    if split_size is None and compress_level is None and kind["os"] == "windows":
        if stub_len + described["size"] + (1 << 20) > payload.MAX_FILE:
            raise OutputError(
                f"{out.name} would be {(stub_len + described['size']) / 2**30:.1f} GiB, and Windows will "
                "not run an executable of 4 GiB or more; add --split to keep the weights in parts beside it"
            )
    parts = write_parts(model, out, split_size, progress) if split_size else None
    source_date_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as raw_dst:
            dst = raw_dst
            stub_sha = copy_hashed(stub, dst, stub_len, hashlib.sha256())
            entry = {"name": model.name, "size": described["size"], "header_size": described["header_size"],
                     "gguf": described["gguf"], "parts": parts or []}  # fmt: skip
            if parts:
                entry.update(storage="split", offset=0, stored_size=0, stored_sha256="",
                             **_hash_model(model, described["header_size"]))  # fmt: skip
            else:
                offset = payload.align_up(stub_len)
                dst.write(b"\0" * (offset - stub_len))
                if compress_level is None:  # stored bytes = the GGUF's: one hash serves both
                    raw_hashes = copy_model(model, raw_dst, described["size"], described["header_size"],
                                            progress, model_hash)  # fmt: skip
                    entry.update(storage="embedded", offset=offset, stored_size=described["size"],
                                 stored_sha256=raw_hashes["sha256"], **raw_hashes)  # fmt: skip
                else:
                    stored = HashingWriter(dst)
                    raw_hashes = _compress_model(model, stored, described, compress_level, progress)
                    entry.update(storage="zstd", offset=offset, stored_size=stored.count,
                                 stored_sha256=stored.digest.hexdigest(), **raw_hashes)  # fmt: skip
            baked = dict(sorted((settings or {}).items()))
            build_id = hashlib.sha256(payload.encode_manifest(
                {"stub": stub_sha, "model": entry["sha256"], "storage": entry["storage"],
                 "stored": entry["stored_sha256"], "parts": parts or [], "settings": baked}
            )).hexdigest()[:16]  # fmt: skip
            manifest = {
                "schema": payload.MANIFEST_SCHEMA,
                "build": {
                    "llamabundle": runtime.__version__,
                    "build_id": build_id,
                    "source_date_epoch": int(source_date_epoch) if source_date_epoch else None,
                },
                "stub": {**kind, "size": stub_len, "sha256": stub_sha},
                "model": entry,
                "settings": baked,
            }
            raw = payload.encode_manifest(manifest)
            m_off = raw_dst.tell()
            dst.write(raw)
            tail = cookie_tail(stub, stub_len, m_off + len(raw))
            dst.write(tail)
            dst.write(payload.encode_trailer(stub_len, m_off, raw, tail))
            raw_dst.flush()
            os.fsync(raw_dst.fileno())
            size = raw_dst.tell()
        if size > payload.MAX_FILE and kind["os"] == "windows":
            raise OutputError(f"{out.name} would be over 4 GiB, which Windows will not run; add --split")
        os.chmod(tmp, 0o755)
        notes = ()
        if kind["os"] == "macos":
            notes = _resign_for_macos(tmp, out)
        os.replace(tmp, out)
    except OSError as e:
        _unlink(tmp)
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return Result(path=out, size=os.path.getsize(out), build_id=build_id, manifest=manifest, notes=notes)


def _resign_for_macos(tmp: str, out: Path) -> tuple:
    """Appended bytes break a Mach-O code signature; sign the bundle again, ad hoc,
    where this machine can (macOS), and say how to otherwise."""
    if sys.platform == "darwin" and shutil.which("codesign"):
        proc = subprocess.run(["codesign", "-s", "-", "-f", tmp], capture_output=True, text=True)
        if proc.returncode:
            raise OutputError(f"codesign could not re-sign {out.name}: {proc.stderr.strip()}")
        return ()
    return (f"{out.name} is a macOS executable: re-sign it on a Mac before running it "
            f"(codesign -s - -f {out.name})",)  # fmt: skip


def _compress_model(model: Path, dst, described: dict, level: int, progress) -> dict:
    """zstandard, multi-threaded, with long-distance matching, as one frame."""
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=described["size"], threads=-1, enable_ldm=True,
        window_log=payload.ZSTD_WINDOW_LOG, write_checksum=True, write_content_size=True,
    )  # fmt: skip
    writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(
        dst, size=described["size"], closefd=False, write_return_read=True
    )
    header = hashlib.sha256()
    sha = copy_hashed(model, writer, described["size"], hashlib.sha256(), header,
                described["header_size"], progress)  # fmt: skip
    writer.flush(zstandard.FLUSH_FRAME)
    writer.close()
    return {"sha256": sha, "header_sha256": header.hexdigest()}


def _hash_model(model: Path, header_size: int) -> dict:
    header = hashlib.sha256()
    sha = copy_hashed(model, None, model.stat().st_size, hashlib.sha256(), header, header_size)
    return {"sha256": sha, "header_sha256": header.hexdigest()}


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
