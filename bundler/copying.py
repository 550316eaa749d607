"""Copying model bytes while hashing them, at about the speed of `cp`.

sha256 releases the GIL, so hashing runs on a second core while the copy goes
on. On Linux the copy itself is `copy_file_range`: the kernel moves the bytes
between the two files (or shares them, on filesystems with reflinks), the way
`cp` does, and starts writing them to the disk as it goes, while a second reader
(``ModelHash``, started as early as the build can) hashes the source through a
mapping. Elsewhere, and where the kernel refuses, every chunk is read once,
hashed on the second core and written.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from .errors import InputError
from .inputs import open_input

CHUNK = 8 << 20
KERNEL_CHUNK = 64 << 20  # copy_file_range steps (progress is reported per step)
_HASHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the range's dirty pages, do not wait
# copy_file_range is refused across filesystems on old kernels and by some filesystems
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}


class HashingWriter:
    """Writes through and hashes (and counts) every byte, so the sha256 of what was
    written comes out of the single pass that writes it. The hash runs on another
    core while the write goes to the kernel."""

    def __init__(self, f):
        self.f, self.digest, self.count = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        hashing = _HASHERS.submit(self.digest.update, data)
        self.f.write(data)
        hashing.result()
        self.count += len(data)
        return len(data)


def _open(src: Path):
    return open_input(src)


def copy_hashed(src: Path, dst, length: int, digest, head=None, head_len=0, progress=None) -> str:
    """Copy the first ``length`` bytes of ``src`` into ``dst`` (None: only hash them),
    hashing them on the way; ``head`` also hashes the first ``head_len`` bytes."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left, done = length, 0
    with _open(src) as f:
        while left:
            n = f.readinto(view[: min(CHUNK, left)])
            if not n:
                raise InputError(f"{src} changed while it was being read; try again")
            chunk = view[:n]
            hashing = _HASHERS.submit(digest.update, chunk)
            if head is not None and done < head_len:
                head.update(chunk[: head_len - done])
            if dst is not None:
                dst.write(chunk)
            hashing.result()
            left -= n
            done += n
            if progress:
                progress(n)
    return digest.hexdigest()


class ModelHash:
    """The sha256 of a model file, computed on another core from the moment it starts.

    A build starts it first thing, so the hash (the longest step) overlaps reading
    the GGUF's metadata and writing the stub, and then the kernel's copy of the
    model. ``cancel()`` stops it (for a build that fails on the way)."""

    def __init__(self, path: Path):
        self.path, self.stop = Path(path), threading.Event()
        self.before = os.stat(self.path)  # OSError: the caller reports the model itself
        self.future = _HASHERS.submit(_hash_file, self.path, self.before.st_size, self.stop)

    @classmethod
    def start(cls, path: Path) -> ModelHash | None:
        try:
            return cls(path)
        except OSError:
            return None  # the GGUF check says what is wrong with it

    def cancel(self) -> None:
        self.stop.set()
        wait([self.future])

    def result(self, size: int) -> str:
        """The hash; checks that the file is still the one it started hashing."""
        sha = self.future.result()
        after = os.stat(self.path)
        if (self.before.st_size, self.before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
            size != self.before.st_size
        ):
            raise InputError(f"{self.path} changed while it was being read; try again")
        return sha


def copy_model(model: Path, dst, size: int, header_size: int, progress=None,
               model_hash: ModelHash | None = None) -> dict:  # fmt: skip
    """Append the GGUF at ``model`` to the binary file ``dst``; its sha256 and the
    sha256 of its first ``header_size`` bytes (header and metadata). ``model_hash``
    is a hash of ``model`` already under way."""
    if hasattr(os, "copy_file_range"):
        dst.flush()
        start = dst.tell()
        model_hash = model_hash or ModelHash(model)
        try:
            _kernel_copy(model, dst.fileno(), start, size, progress)
            dst.seek(start + size)
            return {"sha256": model_hash.result(size), "header_sha256": _hash_head(model, header_size)}
        except _Refused:
            dst.seek(start)
            dst.truncate()
        finally:
            model_hash.cancel()  # a no-op once it is done
    elif model_hash:
        model_hash.cancel()
    header = hashlib.sha256()
    sha = copy_hashed(model, dst, size, hashlib.sha256(), header, header_size, progress)
    return {"sha256": sha, "header_sha256": header.hexdigest()}


class _Refused(Exception):
    """The kernel will not copy between these two files; copy through user space."""


def _kernel_copy(model: Path, out_fd: int, start: int, size: int, progress) -> None:
    with _open(model) as src:
        done = 0
        while done < size:
            step = min(KERNEL_CHUNK, size - done)
            try:
                n = os.copy_file_range(src.fileno(), out_fd, step, done, start + done)
            except OSError as e:
                if done == 0 and e.errno in _NO_KERNEL_COPY:
                    raise _Refused from None
                raise
            if n == 0:
                raise InputError(f"{model} changed while it was being read; try again")
            _start_writeback(out_fd, start + done, n)
            done += n
            if progress:
                progress(n)
    # Wait for the disk while the hash finishes on the other core, so the build's
    # final fsync has little left to do.
    os.fdatasync(out_fd)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range to the disk now, without waiting (Linux's sync_file_range):
    the disk works while the next range is copied, instead of all at the final fsync."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, length, SYNC_FILE_RANGE_WRITE)


@functools.cache
def _sync_file_range():
    import ctypes

    fn = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def _hash_head(path: Path, header_size: int) -> str:
    with _open(path) as f:
        return hashlib.sha256(f.read(header_size)).hexdigest()


def _hash_file(path: Path, size: int, stop: threading.Event) -> str:
    """sha256 of the first ``size`` bytes of ``path``.

    The file is mapped, not read: sha256 then reads the page cache directly, which
    saves a copy of every byte (about a fifth of the hash's time)."""
    digest = hashlib.sha256()
    if not size:
        return digest.hexdigest()
    with _open(path) as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(m) as view:
            for at in range(0, size, CHUNK):
                if stop.is_set():
                    break
                digest.update(view[at : at + CHUNK])
    return digest.hexdigest()
