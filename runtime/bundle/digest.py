"""SHA-256 over a range of a file: the one hashing loop both sides share (the bundler
hashes what it writes, the runtime checks what it reads)."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

CHUNK = 8 << 20  # large reads: hashing a model runs at disk speed, not at syscall speed


def update(digest, f: BinaryIO, offset: int = 0, size: int | None = None, progress=None) -> bool:
    """Feed ``size`` bytes of ``f`` from ``offset`` (to its end when None) into ``digest``;
    False when the file ends first. ``progress(n)`` is told each chunk's length."""
    f.seek(offset)
    left = size
    while left is None or left > 0:
        chunk = f.read(CHUNK if left is None else min(CHUNK, left))
        if not chunk:
            return left is None
        digest.update(chunk)
        if left is not None:
            left -= len(chunk)
        if progress is not None:
            progress(len(chunk))
    return True


def sha256(source: str | BinaryIO, offset: int = 0, size: int | None = None, progress=None) -> str | None:
    """The hex SHA-256 of a range of a file (a path or an open binary file); None when the
    file ends before the range does."""
    digest = hashlib.sha256()
    if isinstance(source, str | bytes) or hasattr(source, "__fspath__"):
        with open(source, "rb") as f:
            complete = update(digest, f, offset, size, progress)
    else:
        complete = update(digest, source, offset, size, progress)
    return digest.hexdigest() if complete else None
