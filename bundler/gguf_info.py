"""Check a GGUF file and describe it for the manifest, with gguf's own reader."""

from __future__ import annotations

import os
import struct

from .errors import InputError
from .inputs import open_input

GGUF_MAGIC = b"GGUF"
# Scalar metadata worth carrying in the manifest (the runtime reads settings from it).
KEEP_PREFIXES = ("general.sampling.",)
SHAPE_KEYS = {
    "block_count": "{arch}.block_count",
    "embedding_length": "{arch}.embedding_length",
    "head_count": "{arch}.attention.head_count",
    "head_count_kv": "{arch}.attention.head_count_kv",
    "key_length": "{arch}.attention.key_length",
    "value_length": "{arch}.attention.value_length",
}


def describe(path: str) -> dict:
    """Validate ``path`` as a complete GGUF; return what the manifest records about it.

    Raises InputError with a one-line message for a missing, foreign, truncated or
    too-new file.
    """
    name = os.path.basename(path)
    with open_input(path, fix="check the model path", expect=".gguf file") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
    if head[:4] != GGUF_MAGIC:
        raise InputError(
            f"{name} is not a GGUF model (it does not start with 'GGUF'); convert it with "
            "llama.cpp's convert_hf_to_gguf.py first"
        )
    if len(head) < 8:
        raise InputError(f"{name} is truncated (only {size} bytes); download it again")

    import gguf
    from gguf.gguf_reader import READER_SUPPORTED_VERSIONS as supported

    version = struct.unpack("<I", head[4:8])[0]
    if version > max(supported):
        raise InputError(
            f"{name} is GGUF version {version}, newer than this llamabundle reads "
            f"(up to {max(supported)}); upgrade llamabundle"
        )
    if version not in supported:
        raise InputError(f"{name} is GGUF version {version}, which is too old; reconvert it")
    try:
        reader = gguf.GGUFReader(path)
        tensors = reader.tensors
        end = max((t.data_offset + int(t.n_bytes) for t in tensors), default=reader.data_offset)
    except (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError):
        raise InputError(f"{name} is truncated or damaged (its GGUF header cannot be read)") from None
    if end > size:
        raise InputError(
            f"{name} is truncated: its tensors need {end:,} bytes but the file has {size:,}; "
            "download it again"
        )

    def value(key, default=None):
        field = reader.get_field(key)
        if field is None:
            return default
        try:
            return field.contents()
        except (ValueError, IndexError, UnicodeDecodeError):
            return default

    arch = value("general.architecture", "unknown")
    ftype = value("general.file_type")
    try:
        ftype_name = gguf.LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        ftype_name = str(ftype)
    qtypes: dict[str, int] = {}
    for t in tensors:
        qtypes[t.tensor_type.name] = qtypes.get(t.tensor_type.name, 0) + 1
    if ftype_name is None:
        ftype_name = max(qtypes, key=qtypes.get) if qtypes else "unknown"
    metadata = {
        k: value(k)
        for k in reader.fields
        if k.startswith(KEEP_PREFIXES) and isinstance(value(k), (int, float, str))
    }
    return {
        "size": size,
        "header_size": int(reader.data_offset),
        "gguf": {
            "version": version,
            "architecture": arch,
            "name": value("general.name") or os.path.splitext(name)[0],
            "file_type": ftype_name,
            "parameters": int(sum(int(t.n_elements) for t in tensors)),
            "tensor_count": len(tensors),
            "tensor_types": dict(sorted(qtypes.items())),
            "context_length": int(value(f"{arch}.context_length", 0) or 0),
            "chat_template": reader.get_field("tokenizer.chat_template") is not None,
            "alignment": int(reader.alignment),
            "shape": {  # what the runtime needs to size the KV cache before loading
                key: int(v)
                for key, gguf_key in SHAPE_KEYS.items()
                if isinstance(v := value(gguf_key.format(arch=arch)), int)
            },  # fmt: skip
            "metadata": metadata,
        },
    }


def copy_metadata(reader, writer, skip=lambda key: False) -> None:
    """Copy a GGUF's key/value metadata from a gguf reader to a gguf writer (all but the
    fields the writer sets itself: the GGUF header, the architecture and split info)."""
    import gguf

    for name, field in reader.fields.items():
        if name.startswith(("GGUF.", "split.")) or name == "general.architecture" or skip(name):
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(name, field.contents())
        else:
            writer.add_key_value(name, field.contents(), field.types[0])


def copy_tensors(reader, writer) -> None:
    """Queue every tensor of the reader (memory-mapped, not loaded) on the writer."""
    for t in reader.tensors:
        shape = list(reversed(t.shape.tolist()))
        writer.add_tensor(t.name, t.data, raw_shape=shape, raw_dtype=t.tensor_type)
