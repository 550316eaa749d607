"""Full integrity check of a bundle: every byte of the stub and of the model."""

from __future__ import annotations

import os

from ..errors import PayloadError
from . import digest
from .payload import Bundle


def _hash_range(path: str, offset: int, size: int, progress) -> str:
    sha = digest.sha256(path, offset, size, progress)
    if sha is None:
        raise PayloadError(f"{os.path.basename(path)} is cut short; download it again")
    return sha


def parts_paths(bundle: Bundle) -> list[str]:
    """Where the model's parts of a split bundle live: beside the executable."""
    here = os.path.dirname(os.path.abspath(bundle.path))
    return [os.path.join(here, p["file"]) for p in bundle.model["parts"]]


def total_bytes(bundle: Bundle) -> int:
    model = bundle.model
    stored = sum(p["size"] for p in model["parts"]) if model["storage"] == "split" else model["stored_size"]
    return bundle.payload_start + stored


def verify(bundle: Bundle, progress=lambda n: None) -> list[str]:
    """Check the sha256 of the stub and of every stored model byte; return what was checked.

    Raises PayloadError naming what does not match.
    """
    name = os.path.basename(bundle.path)
    m, stub = bundle.model, bundle.manifest["stub"]
    checked = []
    if _hash_range(bundle.path, 0, bundle.payload_start, progress) != stub["sha256"]:
        raise PayloadError(f"{name}: the runtime part is damaged (sha256 mismatch); download it again")
    checked.append(f"runtime stub: {bundle.payload_start:,} bytes, sha256 ok")
    if m["storage"] == "split":
        for part, path in zip(m["parts"], parts_paths(bundle), strict=True):
            if not os.path.exists(path):
                raise PayloadError(f"{name}: model part {part['file']} is missing; put it beside {name}")
            if os.path.getsize(path) != part["size"]:
                raise PayloadError(f"{name}: model part {part['file']} has the wrong size; copy it again")
            if _hash_range(path, 0, part["size"], progress) != part["sha256"]:
                raise PayloadError(f"{name}: model part {part['file']} is damaged (sha256 mismatch)")
            checked.append(f"model part {part['file']}: {part['size']:,} bytes, sha256 ok")
    else:
        if _hash_range(bundle.path, m["offset"], m["stored_size"], progress) != m["stored_sha256"]:
            raise PayloadError(f"{name}: the model is damaged (sha256 mismatch); download it again")
        what = "compressed model" if m["storage"] == "zstd" else "model"
        checked.append(f"{what}: {m['stored_size']:,} bytes, sha256 ok")
    return checked
