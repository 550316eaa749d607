"""What the Windows pieces share: the tools they need, their cache, and running Wine.

The toolchain cache is the one install.sh uses for the Linux wheel
(``$LLAMABUNDLE_TOOLCHAIN_CACHE``, else ``~/.cache/llamabundle/toolchain``): what is in it is
keyed on what it was built from, so it is shared by every checkout and test run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from runtime.bundle.source import lock_file

from ..errors import StubError

TOOLCHAIN_ENV = "LLAMABUNDLE_TOOLCHAIN_CACHE"
MINGW = "x86_64-w64-mingw32"
# (command, Debian package that provides it)
TOOLS = {
    "wine": ("wine", "wine"),
    "wineserver": ("wineserver", "wine"),
    "cc": (f"{MINGW}-gcc-posix", "gcc-mingw-w64-x86-64-posix"),
    "cxx": (f"{MINGW}-g++-posix", "g++-mingw-w64-x86-64-posix"),
    "windres": (f"{MINGW}-windres", "binutils-mingw-w64-x86-64"),
    "dlltool": (f"{MINGW}-dlltool", "binutils-mingw-w64-x86-64"),
    "cmake": ("cmake", "cmake"),
    "ninja": ("ninja", "ninja-build"),
    "osslsigncode": ("osslsigncode", "osslsigncode"),
}


def tool(name: str) -> str:
    """The path of a host tool, or one line naming the Debian package to install."""
    command, package = TOOLS[name]
    found = shutil.which(command)
    if not found:
        raise StubError(
            f"building a Windows runtime on Linux needs {command}: install it with "
            f"'apt-get install {package}' (or pass --runtime with a prebuilt Windows stub)"
        )
    return found


def cache_dir() -> Path:
    """install.sh's rule: built tools outlive the runtime cache ($LLAMABUNDLE_CACHE)."""
    if os.environ.get(TOOLCHAIN_ENV):
        return Path(os.environ[TOOLCHAIN_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamabundle" / "toolchain"


def key(*parts: str | bytes | Path) -> str:
    """A short content key: strings as they are, paths by their bytes."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        else:
            h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def download(name: str, version: str, what: str, sdist: bool = False) -> Path:
    """A wheel (or the sdist) of ``name==version`` from PyPI, kept in the toolchain cache."""
    folder = cache_dir() / "downloads"
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    pattern = f"{stem}.tar.gz" if sdist else f"{stem}-*.whl"
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *kind, "-d",
                           str(folder), f"{name}=={version}"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    found = sorted(folder.glob(pattern))
    if proc.returncode != 0 or not found:
        raise StubError(f"cannot download {what} ({name} {version}) from PyPI (no network?): connect "
                        f"once, or put {pattern.replace('*', '...')} in {folder}")  # fmt: skip
    return found[0]


def tool_version(path: str) -> str:
    proc = subprocess.run([path, "--version"], capture_output=True, text=True)
    return (proc.stdout or proc.stderr).splitlines()[0] if proc.returncode == 0 else path


@contextmanager
def building(final: Path):
    """Build into a temporary folder beside ``final`` and rename it into place on
    success: a killed or failed build never leaves a half-made piece in the cache.
    Yields the temporary folder, or None when another build finished it meanwhile."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(final.parent / f"{final.name}.lock"):
        if final.is_dir():
            yield None
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def log_path(what: str) -> Path:
    """Where a build step's whole output goes (the last run of each step is kept)."""
    folder = cache_dir() / "windows" / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / (re.sub(r"[^\w]+", "-", what.split(" (")[0]).strip("-").lower() + ".log")


def _failed(what: str, code: int, output: str, log: Path) -> StubError:
    """One line: the step, the last thing its output said, where the rest is."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    last = lines[-1][:300] if lines else "no output"
    return StubError(f"{what} failed (exit {code}): {last} (whole output: {log})")


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a build step, its output kept in a log; a failure is one StubError line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    log = log_path(what)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise _failed(what, proc.returncode, proc.stderr + proc.stdout, log)
    return proc


def run_counted(cmd: list[str], what: str, log) -> None:
    """Run a ninja build, telling how far it got ("[12/345]" lines) every tenth of the way."""
    log_file = log_path(what)
    with open(log_file, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        shown = 0
        for line in proc.stdout:
            out.write(line)
            m = re.match(r"\[(\d+)/(\d+)\]", line)
            if m and int(m[1]) * 10 // int(m[2]) > shown:
                shown = int(m[1]) * 10 // int(m[2])
                log(f"    {shown * 10}% ({m[1]}/{m[2]} steps)")
        proc.wait()
    if proc.returncode != 0:
        errors = [ln for ln in log_file.read_text().splitlines() if "error:" in ln.lower()][:1]
        raise _failed(what, proc.returncode, "\n".join(errors) or log_file.read_text(), log_file)


class Wine:
    """A Wine prefix of our own, reporting Windows 10 (Python 3.12 refuses older).

    Wine 8 traps (see DEVELOPERS.md): standard streams that are regular files make
    Windows programs fail with "invalid handle", so stdin is /dev/null and
    stdout/stderr are pipes, always."""

    def __init__(self, prefix: Path):
        self.prefix = prefix
        self.env = dict(
            os.environ, WINEPREFIX=str(prefix), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml="
        )
        self.env.pop("DISPLAY", None)

    def ensure(self) -> None:
        if (self.prefix / ".llamabundle-ready").exists():
            return
        self.prefix.mkdir(parents=True, exist_ok=True)
        run([tool("wine"), "wineboot", "--init"], "creating a Wine prefix", env=self.env,
            stdin=subprocess.DEVNULL)  # fmt: skip
        run([tool("wine"), "reg", "add", r"HKCU\Software\Wine", "/v", "Version", "/d", "win10", "/f"],
            "setting the Wine prefix to Windows 10", env=self.env, stdin=subprocess.DEVNULL)  # fmt: skip
        self.wait()
        (self.prefix / ".llamabundle-ready").write_text("")

    def run(self, args: list[str], what: str, **kw) -> subprocess.CompletedProcess:
        env = dict(self.env, **kw.pop("env", {}))
        return run([tool("wine"), *args], what, env=env, stdin=subprocess.DEVNULL, **kw)

    def wait(self) -> None:
        """Let the wineserver finish writing the prefix (registry files are written lazily)."""
        subprocess.run([tool("wineserver"), "-w"], env=self.env, timeout=120)

    @staticmethod
    def path(p: Path) -> str:
        """Wine maps the Linux root as drive Z:."""
        return "Z:" + str(p.resolve()).replace("/", "\\")


class Steps:
    """Progress for a long build: each step says how long it usually takes, so the
    user sees an honest estimate, then how long it took."""

    def __init__(self, log, steps: dict[str, int]):
        self.log, self.steps, self.start = log, steps, time.monotonic()
        total = sum(steps.values())
        what = f"{len(steps)} steps" if len(steps) != 1 else "1 step"
        self.log(f"Building the Windows runtime stub on this machine ({what}, about {_minutes(total)} "
                 "on 2 cores; each step is cached for the next time)...")  # fmt: skip

    @contextmanager
    def step(self, name: str, cached: bool = False):
        if cached:
            self.log(f"  {name}: cached")
            yield
            return
        self.log(f"  {name} (about {_minutes(self.steps.get(name, 60))})...")
        t = time.monotonic()
        yield
        self.log(f"  {name}: done in {_minutes(time.monotonic() - t)}")


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
