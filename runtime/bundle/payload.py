"""The one definition of the llamabundle payload format.

A bundle is a runtime stub (the native launcher with the runtime packed behind
it, or a PyInstaller onefile executable where there is no launcher: Windows)
with the payload appended after it::

    [ stub | zero padding | model GGUF | manifest (JSON) | trailer ]
                          ^ MODEL_ALIGNMENT-aligned offset

* The model starts on a ``MODEL_ALIGNMENT`` boundary of the file, so the GGUF's
  own data section (aligned to 32 bytes relative to the GGUF start) stays aligned
  in the bundle and llama.cpp can mmap the weights in place. 64 KiB covers
  Windows' allocation granularity and Metal's 16 KiB pages.
* The manifest is canonical JSON (sorted keys, UTF-8) with a ``schema`` number.
  Older schemas are migrated explicitly; newer ones are refused with a clear
  "built by a newer llamabundle" error.
* The trailer is the last ``TRAILER.size`` bytes of the file: magic, layout
  version, the manifest's position, length and CRC-32, where the payload (the
  end of the stub) starts, and the size of the launcher tail: a few bytes the
  stub's own launcher looks for at the end of the file (see bundler/onefile_cookie.py).

The bundler writes this format and the runtime reads it; neither repeats any
of the constants below. This module uses the standard library only.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import PayloadError
from . import digest

MAGIC = b"LLBUNDLE"
LAYOUT_VERSION = 1
MANIFEST_SCHEMA = 1
MODEL_ALIGNMENT = 64 * 1024
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

# magic, layout version, flags, manifest crc32, payload start, manifest offset, manifest size,
# launcher tail size (bytes between the manifest and this trailer), reserved
TRAILER = struct.Struct("<8sHHIQQQII")

# Manifest fields (schema 1). Kept here so the writer and the reader agree.
#   schema:   int, MANIFEST_SCHEMA
#   build:    {"llamabundle": version, "build_id": hex, "source_date_epoch": int | None}
#   stub:     {"os", "arch", "format", "size", "sha256"}
#   model:    the GGUF as given: {"name", "size", "sha256", "header_size", "header_sha256",
#              "gguf": {...}}, and how it is stored:
#             "storage": "embedded" (the GGUF itself at "offset", mmapped in place),
#                        "zstd" (a zstandard frame at "offset", unpacked once into a cache), or
#                        "split" (GGUF shards beside the executable, listed in "parts");
#             "offset", "stored_size", "stored_sha256": the bytes in this file (0/"" for split);
#             "parts": [{"file", "size", "sha256", "header_size", "header_sha256"}] for split
#   settings: {key: value} baked in at build time
MANIFEST_KEYS = ("schema", "build", "stub", "model", "settings")
MODEL_KEYS = ("name", "size", "sha256", "header_size", "header_sha256", "gguf",
              "storage", "offset", "stored_size", "stored_sha256", "parts")  # fmt: skip
PART_KEYS = ("file", "size", "sha256", "header_size", "header_sha256")
STORAGES = ("embedded", "zstd", "split")
# zstd frames (a compressed model, the stub's runtime archive) use at most this window:
# 128 MiB, the largest zstd decoders (the runtime's zstandard reader) accept by default.
ZSTD_WINDOW_LOG = 27
# Windows will not run an executable of 4 GiB or more, and FAT32 holds no file that large.
MAX_FILE = 4 * 2**30 - 1

# Environment variables shared by the runtime and the native launcher.
CACHE_ENV = "LLAMABUNDLE_CACHE"  # llamabundle's cache directory (unpacked runtimes and models)
LAUNCHER_ENV = "LLAMABUNDLE_EXE"  # set by the native launcher: the bundle it was started from

# The native launcher (runtime/launcher/) heads the stub on Linux, macOS and Windows:
#
#     [ launcher | runtime archive: one zstd frame | stub trailer ]
#
# The archive holds the runtime (PyInstaller's one-folder build) as a stream of
# entries: ENTRY (kind, mode, path length, data length), then the path (relative,
# UTF-8, '/'-separated), then the data (a file's bytes, or a link's target).
# Parent folders come before what they hold. The launcher unpacks the archive
# once into <cache>/runtime/<runtime id>/ (a temporary folder renamed into place,
# so concurrent first starts are safe) and then execs RUNTIME_EXE there on every
# start, with LAUNCHER_ENV naming the bundle. The stub trailer is the last
# STUB_TRAILER.size bytes of the stub, which ends where the payload starts.
# A start touches its runtime folder (at most once a day); a first start of a new
# runtime removes the others that no start touched for RUNTIME_KEEP_DAYS and that
# no running process uses.
RUNTIME_KEEP_DAYS = 30
STUB_MAGIC = b"LLBSTUB1"
STUB_VERSION = 1
RUNTIME_EXE = "llamabundle-runtime"
STUB_TRAILER_FIELDS = (("magic", "8s"), ("version", "I"), ("entries", "I"), ("archive_offset", "Q"),
                       ("archive_size", "Q"), ("runtime_id", "32s"))  # fmt: skip
STUB_TRAILER = struct.Struct("<" + "".join(f for _, f in STUB_TRAILER_FIELDS))
ENTRY_FIELDS = (("kind", "I"), ("mode", "I"), ("path_len", "I"), ("reserved", "I"), ("size", "Q"))
ENTRY = struct.Struct("<" + "".join(f for _, f in ENTRY_FIELDS))
ENTRY_DIR, ENTRY_FILE, ENTRY_LINK = 1, 2, 3
TRAILER_FIELDS = (("magic", "8s"), ("layout", "H"), ("flags", "H"), ("crc", "I"),
                  ("payload_start", "Q"), ("manifest_offset", "Q"), ("manifest_size", "Q"),
                  ("tail_size", "I"), ("reserved", "I"))  # fmt: skip
assert TRAILER.format == "<" + "".join(f for _, f in TRAILER_FIELDS)


def field_offsets(fields) -> dict:
    """{name: byte offset} of a little-endian struct given as (name, format) pairs."""
    out, fmt = {}, "<"
    for name, code in fields:
        out[name] = struct.calcsize(fmt)
        fmt += code
    return out


# Explicit migrations from older manifest schemas: {old_schema: fn(dict) -> dict of old_schema+1}.
# Schema 1 is the first published schema, so there is nothing to migrate yet.
MIGRATIONS: dict = {}


def align_up(offset: int, alignment: int = MODEL_ALIGNMENT) -> int:
    return (offset + alignment - 1) // alignment * alignment


def encode_manifest(manifest: dict) -> bytes:
    """Canonical bytes of a manifest: the same manifest always gives the same bytes."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode_trailer(payload_start: int, manifest_offset: int, manifest_bytes: bytes,
                   tail: bytes = b"") -> bytes:  # fmt: skip
    """The trailer. ``tail`` (the stub launcher's own locator, see bundler/onefile_cookie.py) sits
    between the manifest and the trailer; the CRC-32 covers both."""
    crc = zlib.crc32(manifest_bytes + tail) & 0xFFFFFFFF
    return TRAILER.pack(
        MAGIC, LAYOUT_VERSION, 0, crc, payload_start, manifest_offset, len(manifest_bytes), len(tail), 0
    )


@dataclass(frozen=True)
class Bundle:
    """A parsed, structurally checked payload."""

    path: str
    file_size: int
    payload_start: int
    manifest: dict

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def settings(self) -> dict:
        return self.manifest.get("settings") or {}


def has_payload(f: BinaryIO) -> bool:
    """True if the open file ends with a llamabundle trailer (of any layout version)."""
    size = f.seek(0, os.SEEK_END)
    if size < TRAILER.size:
        return False
    f.seek(size - TRAILER.size)
    return f.read(len(MAGIC)) == MAGIC


def read_bundle(path: str, *, check_header: bool = True) -> Bundle:
    """Read and check the trailer, manifest and model header of a bundle.

    This is cheap (a few reads, no full hash), so the runtime does it on every start.
    Any damage is reported as a PayloadError with a one-line message.
    """
    try:
        with open(path, "rb") as f:
            bundle = _read(f, path)
            if check_header:
                _check_model_header(f, bundle)
            return bundle
    except OSError as e:
        raise PayloadError(f"cannot read {path}: {e.strerror or e}") from None


def _read(f: BinaryIO, path: str) -> Bundle:
    size = f.seek(0, os.SEEK_END)
    name = os.path.basename(path)
    if size < TRAILER.size:
        raise PayloadError(f"{name} has no llamabundle payload (file is only {size} bytes)")
    f.seek(size - TRAILER.size)
    magic, layout, _flags, crc, start, m_off, m_len, tail, _ = TRAILER.unpack(f.read(TRAILER.size))
    if magic != MAGIC:
        raise PayloadError(
            f"{name} has no llamabundle payload: the file is cut short or was not built by "
            "llamabundle; rebuild it with 'llamabundle build'"
        )
    if layout > LAYOUT_VERSION:
        raise PayloadError(
            f"{name} was built by a newer llamabundle (payload layout {layout}, this runtime "
            f"reads up to {LAYOUT_VERSION}); use a newer runtime"
        )
    end_ok = m_off + m_len + tail == size - TRAILER.size
    if not (0 < start <= m_off and m_len <= MAX_MANIFEST_BYTES and end_ok):
        raise PayloadError(f"{name} has a damaged payload trailer; rebuild the bundle")
    f.seek(m_off)
    raw = f.read(m_len + tail)
    if len(raw) != m_len + tail or zlib.crc32(raw) & 0xFFFFFFFF != crc:
        raise PayloadError(
            f"{name} has a damaged manifest or trailer (checksum mismatch); rebuild the bundle"
        )
    try:
        manifest = json.loads(raw[:m_len].decode())
    except (UnicodeDecodeError, ValueError):
        raise PayloadError(f"{name} has an unreadable manifest; rebuild the bundle") from None
    manifest = migrate_manifest(manifest, name)
    _check_layout(manifest, name, start, m_off)
    return Bundle(path=path, file_size=size, payload_start=start, manifest=manifest)


def migrate_manifest(manifest: dict, name: str = "bundle") -> dict:
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise PayloadError(f"{name} has a manifest without a valid schema number; rebuild it")
    if schema > MANIFEST_SCHEMA:
        raise PayloadError(
            f"{name} was built by a newer llamabundle (manifest schema {schema}, this runtime "
            f"reads up to {MANIFEST_SCHEMA}); use a newer runtime"
        )
    while schema < MANIFEST_SCHEMA:
        if schema not in MIGRATIONS:
            raise PayloadError(
                f"{name} has manifest schema {schema}, which this runtime cannot migrate; "
                "rebuild the bundle with this llamabundle"
            )
        manifest = MIGRATIONS[schema](dict(manifest))
        schema = manifest["schema"]
    return manifest


def _check_layout(manifest: dict, name: str, start: int, m_off: int) -> None:
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    model = manifest.get("model")
    if not missing and isinstance(model, dict):
        missing = [f"model.{k}" for k in MODEL_KEYS if k not in model]
    if missing:
        raise PayloadError(f"{name} has an incomplete manifest (missing {', '.join(missing)})")
    storage, off, stored = model["storage"], model["offset"], model["stored_size"]
    if storage not in STORAGES:
        raise PayloadError(
            f"{name} stores its model as {storage!r}, which this runtime cannot read; use a newer runtime"
        )
    if not all(isinstance(v, int) for v in (off, stored, model["size"], model["header_size"])):
        raise PayloadError(f"{name} has a damaged manifest (bad model offsets)")
    if not 0 < model["header_size"] <= model["size"]:
        raise PayloadError(f"{name} has a damaged manifest (bad model header size)")
    if storage == "split":
        parts = model["parts"]
        if (
            not isinstance(parts, list)
            or not parts
            or not all(isinstance(p, dict) and all(k in p for k in PART_KEYS) for p in parts)
        ):
            raise PayloadError(f"{name} has a damaged manifest (bad list of model parts)")
    elif off % MODEL_ALIGNMENT or off < start or off + stored > m_off or stored <= 0:
        raise PayloadError(f"{name} has a damaged manifest (model outside the payload)")


def _check_model_header(f: BinaryIO, bundle: Bundle) -> None:
    """Hash the GGUF header and metadata (everything llama.cpp parses before the
    weights), so damaged metadata is refused here and never reaches llama.cpp."""
    model = bundle.model
    if model["storage"] != "embedded":
        return  # checked where those bytes are read: the unpacked cache file, the parts
    if not header_ok(f, model["offset"], model["header_size"], model["header_sha256"]):
        raise PayloadError(
            f"{os.path.basename(bundle.path)} has a damaged model header; rebuild the bundle "
            "or run it with --verify for a full check"
        )


def header_ok(f: BinaryIO, offset: int, size: int, sha256: str) -> bool:
    """Whether the ``size`` bytes at ``offset`` hash to ``sha256``."""
    return digest.sha256(f, offset, size) == sha256
