"""Split a GGUF into shards llama.cpp loads natively (its gguf-split format), for
bundles that must stay under 4 GiB per file (Windows, FAT32 USB sticks)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from runtime.bundle.payload import MAX_FILE

from .errors import InputError, OutputError
from .gguf_info import copy_metadata, copy_tensors

DEFAULT_PART = MAX_FILE + 1 - 256 * 2**20  # 3.75 GiB: room for the biggest tensors to spill over


def part_names(out: Path, count: int) -> list[str]:
    """What the parts of bundle ``out`` are called: ``chat-00001-of-00003.gguf``, ..."""
    stem = out.name.removesuffix(".exe")
    return [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def write_parts(model: Path, out: Path, max_size: int, progress=None) -> list[dict]:
    """Write the shards beside ``out`` (atomically, each renamed into place once all
    are written) and return their manifest entries."""
    import gguf

    reader = gguf.GGUFReader(str(model))
    arch = reader.get_field("general.architecture").contents()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        base = Path(tmp) / "part.gguf"
        writer = gguf.GGUFWriter(str(base), arch, split_max_size=max_size)
        copy_metadata(reader, writer)
        copy_tensors(reader, writer)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=False)
            writer.close()
        except OSError as e:
            raise OutputError(f"cannot write the model parts beside {out}: {e.strerror or e}") from None
        written = sorted(Path(tmp).glob("part*.gguf"))
        names = part_names(out, len(written))
        parts = []
        for path, name in zip(written, names, strict=True):
            size = path.stat().st_size
            if size > MAX_FILE:
                raise InputError(f"{model.name} has a tensor too large to fit a part under 4 GiB")
            parts.append({"file": name, "size": size, **_hashes(path, progress)})
        for path, name in zip(written, names, strict=True):
            os.replace(path, out.parent / name)
    return parts


def _hashes(path: Path, progress) -> dict:
    import gguf

    header_size = int(gguf.GGUFReader(str(path)).data_offset)
    full, head, done = hashlib.sha256(), hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            full.update(chunk)
            if done < header_size:
                head.update(chunk[: header_size - done])
            done += len(chunk)
            if progress:
                progress(len(chunk))
    return {"sha256": full.hexdigest(), "header_size": header_size, "header_sha256": head.hexdigest()}
