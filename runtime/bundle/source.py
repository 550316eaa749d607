"""Where the model's GGUF bytes are, for each way a bundle can store them.

* embedded: inside the executable, at an aligned offset (mapped in place);
* zstd: compressed inside the executable; unpacked once into a content-addressed
  cache (``<cache>/models/<sha256>.gguf``), then mapped from there on every start;
* split: GGUF shards beside the executable (for files over 4 GiB).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import PayloadError, ResourceError
from ..progress import Progress
from .payload import CACHE_ENV, Bundle, header_ok
from .verify import parts_paths

CHUNK = 4 << 20
SPACE_MARGIN = 64 << 20


@dataclass(frozen=True)
class ModelFiles:
    paths: list[str]
    offset: int  # where the GGUF starts in paths[0] (only an embedded model has one)


def cache_root(override: str | None = None) -> Path:
    """llamabundle's cache directory: --cache-dir, $LLAMABUNDLE_CACHE, or the platform's."""
    if override:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "llamabundle"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamabundle"


def locate(bundle: Bundle, cache_dir: str | None = None) -> ModelFiles:
    model = bundle.model
    if model["storage"] == "embedded":
        return ModelFiles([bundle.path], model["offset"])
    if model["storage"] == "split":
        return ModelFiles(_check_parts(bundle), 0)
    return ModelFiles([str(unpack(bundle, cache_root(cache_dir)))], 0)


def _check_parts(bundle: Bundle) -> list[str]:
    name = os.path.basename(bundle.path)
    paths = parts_paths(bundle)
    for part, path in zip(bundle.model["parts"], paths, strict=True):
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                ok = size == part["size"] and header_ok(f, 0, part["header_size"], part["header_sha256"])
        except OSError:
            raise PayloadError(
                f"{name} keeps its model in {len(paths)} parts beside it, and {part['file']} is "
                f"missing; copy all {name}'s parts into {os.path.dirname(path)}"
            ) from None
        if not ok:
            raise PayloadError(f"{name}: model part {part['file']} is damaged or cut short; copy it again")
    return paths


def unpack(bundle: Bundle, root: Path) -> Path:
    """The model's GGUF in the cache, unpacked (once) from the compressed payload."""
    model = bundle.model
    target = root / "models" / f"{model['sha256']}.gguf"
    if _cached(target, model):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PayloadError(f"cannot create the model cache {target.parent}: {e.strerror}; "
                           "choose another place with --cache-dir") from None  # fmt: skip
    with lock_file(target.with_suffix(".lock")):
        if _cached(target, model):  # another first start unpacked it while we waited
            return target
        _remove_stale(target)
        free = shutil.disk_usage(target.parent).free
        if free < model["size"] + SPACE_MARGIN:
            raise ResourceError(
                f"not enough free space to unpack the model: it needs {model['size'] / 2**20:,.0f} MiB in "
                f"{target.parent}, which has {free / 2**20:,.0f} MiB free; free some space or choose "
                "another place with --cache-dir"
            )
        tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        try:
            _decompress(bundle, tmp)
            os.replace(tmp, target)
        except OSError as e:
            _unlink(tmp)
            raise ResourceError(
                f"cannot unpack the model into {target.parent}: {e.strerror or e}; "
                "free some space or choose another place with --cache-dir"
            ) from None
        except BaseException:
            _unlink(tmp)
            raise
    return target


def _cached(target: Path, model: dict) -> bool:
    try:
        if target.stat().st_size != model["size"]:
            return False
        with open(target, "rb") as f:
            return header_ok(f, 0, model["header_size"], model["header_sha256"])
    except OSError:
        return False


def _decompress(bundle: Bundle, tmp: Path) -> None:
    import zstandard

    model = bundle.model
    digest = hashlib.sha256()
    with open(bundle.path, "rb") as src, open(tmp, "wb") as dst, \
            Progress("Unpacking the model (first start only)", model["size"]) as progress:  # fmt: skip
        src.seek(model["offset"])
        reader = zstandard.ZstdDecompressor().stream_reader(_Bounded(src, model["stored_size"]))
        try:
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                progress(len(chunk))
        except zstandard.ZstdError:
            raise PayloadError(f"{os.path.basename(bundle.path)}: the compressed model is damaged; "
                               "download the bundle again") from None  # fmt: skip
        dst.flush()
        os.fsync(dst.fileno())
    if digest.hexdigest() != model["sha256"]:
        raise PayloadError(f"{os.path.basename(bundle.path)}: the unpacked model does not match its "
                           "sha256; download the bundle again")  # fmt: skip


class _Bounded:
    """The next ``left`` bytes of a file, and not one more (the manifest follows them)."""

    def __init__(self, f, left: int):
        self.f, self.left = f, left

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        self.left -= len(data)
        return data


def _remove_stale(target: Path) -> None:
    """Drop half-written unpackings left by a start that was killed."""
    for tmp in target.parent.glob(f".{target.name}.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or not _alive(int(pid)):
            _unlink(tmp)


def _alive(pid: int) -> bool:
    """Whether the process that wrote a temporary file may still be writing it."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:  # a killed process nobody has reaped yet is a zombie: it writes nothing more
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class lock_file:
    """An exclusive lock file (where the platform has fcntl), so two first starts
    unpack once; without it each unpacks to its own file and the rename is atomic."""

    def __init__(self, path: Path):
        self.path, self.f = path, None

    def __enter__(self):
        try:
            import fcntl

            self.f = open(self.path, "w")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        except (ImportError, OSError):
            self.f = None
        return self

    def __exit__(self, *exc):
        if self.f:
            self.f.close()
