"""The native launcher stub: runtime/launcher.c in front of the packed runtime.

PyInstaller's onefile launcher unpacks the whole runtime (about 60 MB of
libraries) into a fresh temporary folder on every start. Our launcher unpacks
it once into a content-addressed cache and then execs it directly, so a start
costs what Python and llama.cpp cost, not an unpack (see DEVELOPERS.md).

The stub is ``[ launcher | runtime archive | stub trailer ]`` in the format
runtime/payload.py defines; this module writes the C header that gives the
launcher those constants, compiles it, and packs PyInstaller's one-folder build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from runtime import errors, payload

from .errors import StubError

LAUNCHER_SOURCE = Path(payload.__file__).with_name("launcher.c")
ARCHIVE_LEVEL = 19


def supported() -> bool:
    """Whether this platform builds native launcher stubs (Windows keeps PyInstaller's)."""
    return sys.platform.startswith("linux") or sys.platform == "darwin"


def header() -> str:
    """launcher_format.h: runtime/payload.py's constants, for the C launcher."""
    trailer = payload.field_offsets(payload.TRAILER_FIELDS)
    stub = payload.field_offsets(payload.STUB_TRAILER_FIELDS)
    entry = payload.field_offsets(payload.ENTRY_FIELDS)
    defs = {
        "LB_MAGIC": _c_string(payload.MAGIC),
        "LB_STUB_MAGIC": _c_string(payload.STUB_MAGIC),
        "LB_MAGIC_LEN": len(payload.MAGIC),
        "LB_LAYOUT_VERSION": payload.LAYOUT_VERSION,
        "LB_TRAILER_SIZE": payload.TRAILER.size,
        "LB_TRAILER_LAYOUT": trailer["layout"],
        "LB_TRAILER_PAYLOAD_START": trailer["payload_start"],
        "LB_STUB_TRAILER_SIZE": payload.STUB_TRAILER.size,
        "LB_STUB_VERSION": payload.STUB_VERSION,
        "LB_STUB_VERSION_FIELD": stub["version"],
        "LB_STUB_ENTRIES": stub["entries"],
        "LB_STUB_ARCHIVE_OFFSET": stub["archive_offset"],
        "LB_STUB_ARCHIVE_SIZE": stub["archive_size"],
        "LB_STUB_RUNTIME_ID": stub["runtime_id"],
        "LB_ENTRY_SIZE": payload.ENTRY.size,
        "LB_ENTRY_KIND": entry["kind"],
        "LB_ENTRY_MODE": entry["mode"],
        "LB_ENTRY_PATH_LEN": entry["path_len"],
        "LB_ENTRY_SIZE_FIELD": entry["size"],
        "LB_ENTRY_DIR": payload.ENTRY_DIR,
        "LB_ENTRY_FILE": payload.ENTRY_FILE,
        "LB_ENTRY_LINK": payload.ENTRY_LINK,
        "LB_RUNTIME_EXE": _c_string(payload.RUNTIME_EXE.encode()),
        "LB_CACHE_ENV": _c_string(payload.CACHE_ENV.encode()),
        "LB_LAUNCHER_ENV": _c_string(payload.LAUNCHER_ENV.encode()),
        "LB_RUNTIME_KEEP_DAYS": payload.RUNTIME_KEEP_DAYS,
        "LB_EXIT_PAYLOAD": errors.PayloadError.exit_code,
        "LB_EXIT_RESOURCE": errors.ResourceError.exit_code,
    }
    lines = ["/* Generated from runtime/payload.py by bundler/native.py; do not edit. */"]
    lines += [f"#define {k} {v}" for k, v in defs.items()]
    return "\n".join(lines) + "\n"


def _c_string(raw: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03o}" for b in raw) + '"'


def compile_launcher(workdir: Path) -> Path:
    """Compile the launcher, with zstd's decoder linked in statically where possible."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise StubError("no C compiler found to build the native launcher; install gcc (or set CC)")
    (workdir / "launcher_format.h").write_text(header())
    out = workdir / "launcher"
    base = [cc, "-O2", "-std=c11", "-Wall", "-Wextra", "-I", str(workdir),
            "-o", str(out), str(LAUNCHER_SOURCE)]  # fmt: skip
    attempts = [[*base, "-Wl,-Bstatic", "-lzstd", "-Wl,-Bdynamic", "-s"], [*base, "-lzstd"]]
    if sys.platform == "darwin":
        attempts = [[*base, f"{p}/lib/libzstd.a", f"-I{p}/include"] for p in _brew_prefixes()]
    last = ""
    for cmd in attempts:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            return out
        last = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    detail = "\n".join(last) if last else "no zstd found"
    raise StubError(f"could not compile the native launcher (install libzstd-dev):\n{detail}")


def _brew_prefixes() -> list[str]:
    return [p for p in ("/opt/homebrew/opt/zstd", "/usr/local/opt/zstd") if os.path.isdir(p)]


def entries(root: Path):
    """(kind, mode, relative path, source path) of a folder, parents first, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = here / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                yield payload.ENTRY_LINK, 0o777, rel, p
            elif p.is_dir():
                yield payload.ENTRY_DIR, 0o755, rel, p
            else:
                yield payload.ENTRY_FILE, 0o755 if os.access(p, os.X_OK) else 0o644, rel, p


def pack(root: Path, out) -> tuple[int, int]:
    """Write ``root`` as one zstd frame of entries to the binary file ``out``;
    returns (entries, compressed size). Deterministic for the same folder."""
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        ARCHIVE_LEVEL, threads=os.cpu_count() or 1, write_checksum=True, enable_ldm=True,
        window_log=payload.ZSTD_WINDOW_LOG,
    )  # fmt: skip
    count, start = 0, out.tell()
    writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)
    for kind, mode, rel, src in entries(root):
        data = os.readlink(src).encode() if kind == payload.ENTRY_LINK else b""
        size = src.stat().st_size if kind == payload.ENTRY_FILE else len(data)
        path = rel.encode()
        writer.write(payload.ENTRY.pack(kind, mode, len(path), 0, size) + path + data)
        if kind == payload.ENTRY_FILE:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, writer, 1 << 20)
        count += 1
    writer.flush(zstandard.FLUSH_FRAME)
    return count, out.tell() - start


def assemble(onedir: Path, workdir: Path, target: Path) -> None:
    """Write the stub: launcher, packed ``onedir`` and the stub trailer."""
    launcher = compile_launcher(workdir)
    with open(target, "wb") as out:
        out.write(launcher.read_bytes())
        offset = out.tell()
        count, size = pack(onedir, out)
        out.flush()
        with open(target, "rb") as f:
            f.seek(offset)
            digest = hashlib.sha256()
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        runtime_id = digest.hexdigest()[:32].encode()
        out.seek(offset + size)
        out.write(payload.STUB_TRAILER.pack(payload.STUB_MAGIC, payload.STUB_VERSION, count, offset,
                                            size, runtime_id))  # fmt: skip
    os.chmod(target, 0o755)
