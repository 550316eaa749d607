"""The native launcher stub: runtime/launcher/ in front of the packed runtime.

PyInstaller's onefile launcher unpacks the whole runtime (about 60 MB of
libraries) into a fresh temporary folder on every start. Our launcher unpacks
it once into a content-addressed cache and then runs it directly, so a start
costs what Python and llama.cpp cost, not an unpack (see DEVELOPERS.md).

The stub is ``[ launcher | runtime archive | stub trailer ]`` in the format
runtime/bundle/payload.py defines; this module writes the C header that gives the
launcher those constants, compiles it (for this host, or for Windows x86-64 with
mingw-w64), and packs PyInstaller's one-folder build.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import runtime
from runtime import errors
from runtime.bundle import digest, payload

from .errors import StubError
from .windows import toolchain

# unpack.c is the part every OS shares; posix.c and win32.c hold the rest.
LAUNCHER_DIR = Path(runtime.__file__).with_name("launcher")
LAUNCHER_SOURCES = {"posix": ("unpack.c", "posix.c"), "windows": ("unpack.c", "win32.c")}
ARCHIVE_LEVEL = 19
HOST_OS = {"win32": "windows", "darwin": "macos"}.get(sys.platform, "linux")
CFLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra")
# zstandard's sdist vendors zstd as one amalgamated zstd.c; we keep its decoder only.
ZSTD_FILES = ("zstd.h", "zstd_errors.h", "LICENSE", "COPYING")
ZSTD_DECODER = "decoder.c"


def supported() -> bool:
    """Whether this host builds native launcher stubs for itself (a Windows host keeps PyInstaller's
    onefile; Windows stubs with the native launcher are cross-built from Linux, bundler/windows/)."""
    return sys.platform.startswith("linux") or sys.platform == "darwin"


def header() -> str:
    """launcher_format.h: runtime/bundle/payload.py's constants, for the C launcher."""
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
    lines = ["/* Generated from runtime/bundle/payload.py by bundler/native.py; do not edit. */"]
    lines += [f"#define {k} {v}" for k, v in defs.items()]
    return "\n".join(lines) + "\n"


def _c_string(raw: bytes) -> str:
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:03o}" for b in raw) + '"'


def compile_launcher(workdir: Path, target_os: str = HOST_OS) -> Path:
    """Compile the launcher for ``target_os`` (this host's OS, or "windows" from Linux),
    with zstd's decoder linked in statically where possible."""
    (workdir / "launcher_format.h").write_text(header())
    if target_os == "windows" and HOST_OS != "windows":
        return _compile_windows(workdir)
    if target_os != HOST_OS:
        raise StubError(f"a {target_os} launcher cannot be built on {HOST_OS}; build it on {target_os}")
    return _compile_posix(workdir)


def _sources(kind: str) -> list[str]:
    return [str(LAUNCHER_DIR / name) for name in LAUNCHER_SOURCES[kind]]


def _compile_posix(workdir: Path) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise StubError("no C compiler found to build the native launcher; install gcc (or set CC)")
    out = workdir / "launcher"
    base = [cc, *CFLAGS, "-I", str(workdir), "-o", str(out), *_sources("posix")]
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


def _compile_windows(workdir: Path) -> Path:
    """launcher.exe: a static console program. What zstd's common code holds that the
    decoder never calls (its thread pool, for one) is dropped by the linker's section GC."""
    cc = toolchain.tool("cc")
    zstd = zstd_decoder_sources()
    out = workdir / "launcher.exe"
    cmd = [cc, *CFLAGS, "-municode", "-ffunction-sections", "-fdata-sections", "-I", str(workdir),
           "-I", str(zstd), "-o", str(out), *_sources("windows"), str(zstd / ZSTD_DECODER),
           "-static", "-s", "-Wl,--gc-sections"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise StubError(f"could not compile the Windows launcher:\n{detail}")
    return out


def zstd_decoder_sources() -> Path:
    """A folder with zstd's decoder (``decoder.c``) and headers, taken from the sdist of
    the zstandard installed here (no Windows libzstd comes with Debian's mingw). Fetched
    once with pip into the toolchain cache, keyed by zstandard's version."""
    version = md.version("zstandard")
    final = toolchain.cache_dir() / f"zstd-decoder-{version}"
    if (final / ZSTD_DECODER).is_file():
        return final
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        env = toolchain.TOOLCHAIN_ENV
        raise StubError(f"cannot write {final.parent}: {e.strerror} (set {env})") from None
    with tempfile.TemporaryDirectory(prefix=f".{final.name}.", dir=final.parent) as tmp:
        src = Path(tmp) / "src"
        sdist = toolchain.download("zstandard", version, "zstd's sources (Windows launcher)", sdist=True)
        _extract_decoder(sdist, src)
        try:  # a folder renamed into place: a killed fetch leaves no half-written copy
            os.replace(src, final)
        except OSError as e:
            if not (final / ZSTD_DECODER).is_file():  # else another build put it there first
                raise StubError(f"cannot write {final}: {e.strerror}") from None
    return final


def _extract_decoder(sdist: Path, out: Path) -> None:
    """Copy zstd's headers and license, and write the decoder part of its zstd.c."""
    out.mkdir()
    with tarfile.open(sdist) as tar:
        files = {Path(m.name).name: m for m in tar.getmembers()
                 if m.isfile() and Path(m.name).parent.name == "zstd"}  # fmt: skip
        if "zstd.c" not in files or "zstd.h" not in files:
            raise StubError(f"{sdist.name} has no zstd/zstd.c (a zstandard release that does not vendor "
                            "zstd as one file); install zstandard 0.22 or later")  # fmt: skip
        for name in ZSTD_FILES:
            if name in files:
                (out / name).write_bytes(tar.extractfile(files[name]).read())
        source = tar.extractfile(files["zstd.c"]).read().decode()
    (out / ZSTD_DECODER).write_text(decoder_only(source))


# zstd.c inlines each library file after a "/**** start inlining <dir>/<file>.c ****/" line;
# the headers they include are inlined where first included, inside the common/ files.
_INLINED_C = re.compile(r"^/\*{4} start inlining (\w+)/[\w.]+\.c \*{4}/$", re.M)


def decoder_only(source: str) -> str:
    """zstd.c without its compress/ and dictBuilder/ files: a third of it to compile.
    Were the markers ever to change, the whole file is kept (the linker drops the
    unused encoder)."""
    starts = list(_INLINED_C.finditer(source))
    if not any(m.group(1) == "decompress" for m in starts):
        return source
    kept, last, keep = [], 0, True
    for m in starts:
        if keep:
            kept.append(source[last : m.start()])
        keep, last = m.group(1) in ("common", "decompress"), m.start()
    if keep:
        kept.append(source[last:])
    return "".join(kept)


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


def pack(root: Path, out, *, windows: bool = False) -> tuple[int, int]:
    """Write ``root`` as one zstd frame of entries to the binary file ``out``;
    returns (entries, compressed size). Deterministic for the same folder.
    ``windows``: refuse what the Windows launcher cannot unpack."""
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(
        ARCHIVE_LEVEL, threads=os.cpu_count() or 1, write_checksum=True, enable_ldm=True,
        window_log=payload.ZSTD_WINDOW_LOG,
    )  # fmt: skip
    count, start = 0, out.tell()
    writer = zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False)
    for kind, mode, rel, src in entries(root):
        if windows:
            _check_windows_entry(kind, rel, root)
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


def _check_windows_entry(kind: int, rel: str, root: Path) -> None:
    """Windows runtimes hold no links (making one needs a privilege most users lack), and
    a '\\' or ':' in a name would be a separator or a drive there."""
    if kind == payload.ENTRY_LINK or "\\" in rel or ":" in rel:
        what = "a symbolic link" if kind == payload.ENTRY_LINK else "a name Windows cannot hold"
        raise StubError(f"{root / rel} is {what}; a Windows runtime folder cannot contain it")


def assemble(onedir: Path, workdir: Path, target: Path, target_os: str = HOST_OS) -> None:
    """Write the stub for ``target_os``: launcher, packed ``onedir`` and the stub trailer."""
    launcher = compile_launcher(workdir, target_os)
    with open(target, "wb") as out:
        out.write(launcher.read_bytes())
        offset = out.tell()
        count, size = pack(onedir, out, windows=target_os == "windows")
        out.flush()
        runtime_id = digest.sha256(str(target), offset)[:32].encode()
        out.seek(offset + size)
        out.write(payload.STUB_TRAILER.pack(payload.STUB_MAGIC, payload.STUB_VERSION, count, offset,
                                            size, runtime_id))  # fmt: skip
    os.chmod(target, 0o755)
