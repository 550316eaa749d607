"""Keep PyInstaller's launcher fast when a payload follows it (Windows stubs).

Stubs headed by our native launcher (runtime/launcher/, every OS) find
their runtime through the payload trailer and need nothing here.

PyInstaller's bootloader finds its archive by scanning the executable from the
end backwards for the archive's 88-byte "cookie". With a model appended, that
scan would read through the whole model on every start (both the launcher and
its child: about 2 s per 300 MB here). So the bundler writes a copy of the
cookie next to the end of the bundle, with the archive length adjusted so that
the archive start it points to is unchanged: the scan stops within the last
few hundred bytes. The copy is the payload's "launcher tail" (runtime/bundle/payload.py).
"""

from __future__ import annotations

import struct
from pathlib import Path

from runtime.bundle import payload

COOKIE_MAGIC = b"MEI\014\013\012\013\016"
COOKIE = struct.Struct("!8sIIII64s")  # magic, archive length, TOC offset, TOC length, pyvers, libname
SEARCH = 1 << 20  # the cookie sits near the end of the stub (an ELF section table may follow it)


def cookie_tail(stub: Path, stub_len: int, tail_pos: int) -> bytes:
    """The cookie to place at file offset ``tail_pos``; b"" when the stub has no
    PyInstaller cookie or the archive would sit too far (4 GiB) before it."""
    start = max(0, stub_len - SEARCH)
    with open(stub, "rb") as f:
        f.seek(max(0, stub_len - payload.STUB_TRAILER.size))
        if f.read(len(payload.STUB_MAGIC)) == payload.STUB_MAGIC:
            return b""  # a native launcher stub
        f.seek(start)
        window = f.read(stub_len - start)
    at = window.rfind(COOKIE_MAGIC)
    if at < 0 or at + COOKIE.size > len(window):
        return b""
    magic, length, toc, toc_len, pyvers, libname = COOKIE.unpack_from(window, at)
    archive_start = start + at + COOKIE.size - length
    new_length = tail_pos + COOKIE.size - archive_start
    if archive_start < 0 or new_length >= 2**32:
        return b""
    return COOKIE.pack(magic, new_length, toc, toc_len, pyvers, libname)
