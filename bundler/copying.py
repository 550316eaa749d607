"""Copying model bytes while hashing them, at about the speed of `cp`.

sha256 releases the GIL, so hashing runs on a second core while the copy goes
on. On Linux the copy itself is `copy_file_range`: the kernel moves the bytes
between the two files (or shares them, on filesystems with reflinks), the way
`cp` does, while a second reader hashes the source. Elsewhere, and where the
kernel refuses, every chunk is read once, hashed on the second core and written.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from .errors import InputError

CHUNK = 8 << 20
KERNEL_CHUNK = 64 << 20  # copy_file_range steps (progress is reported per step)
_HASHERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
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
    try:
        return open(src, "rb")
    except OSError as e:
        raise InputError(f"cannot read {src}: {e.strerror}") from None


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


def copy_model(model: Path, dst, size: int, header_size: int, progress=None) -> dict:
    """Append the GGUF at ``model`` to the binary file ``dst``; its sha256 and the
    sha256 of its first ``header_size`` bytes (header and metadata)."""
    if hasattr(os, "copy_file_range"):
        dst.flush()
        start = dst.tell()
        try:
            hashes = _kernel_copy(model, dst.fileno(), start, size, header_size, progress)
            dst.seek(start + size)
            return hashes
        except _Refused:
            dst.seek(start)
            dst.truncate()
    header = hashlib.sha256()
    sha = copy_hashed(model, dst, size, hashlib.sha256(), header, header_size, progress)
    return {"sha256": sha, "header_sha256": header.hexdigest()}


class _Refused(Exception):
    """The kernel will not copy between these two files; copy through user space."""


def _kernel_copy(model: Path, out_fd: int, start: int, size: int, header_size: int, progress) -> dict:
    stop = threading.Event()
    with _open(model) as src:
        before = os.fstat(src.fileno())
        hashing = _HASHERS.submit(_hash_file, model, size, header_size, stop)
        try:
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
                done += n
                if progress:
                    progress(n)
            # The bytes are in the page cache; write them to the disk while the hash
            # finishes on the other core, so the build's final fsync has little left to do.
            os.fdatasync(out_fd)
        except BaseException:
            stop.set()
            wait([hashing])
            raise
        hashes = hashing.result()
        after = os.fstat(src.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise InputError(f"{model} changed while it was being read; try again")
    return hashes


def _hash_file(path: Path, size: int, header_size: int, stop: threading.Event) -> dict:
    """sha256 of the first ``size`` bytes of ``path`` and of its first ``header_size``.

    The file is mapped, not read: sha256 then reads the page cache directly, which
    saves a copy of every byte (about a fifth of the hash's time). The size and mtime
    check around the copy catches a model that changes meanwhile."""
    digest, header = hashlib.sha256(), hashlib.sha256()
    with _open(path) as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
        if hasattr(m, "madvise"):
            m.madvise(mmap.MADV_SEQUENTIAL)
        with memoryview(m) as view:
            header.update(view[:header_size])
            for at in range(0, size, CHUNK):
                if stop.is_set():
                    break
                digest.update(view[at : at + CHUNK])
    return {"sha256": digest.hexdigest(), "header_sha256": header.hexdigest()}
