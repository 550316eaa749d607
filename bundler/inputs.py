"""Opening what the user gave us: one place that turns "no such file", "is a
directory" and "permission denied" into one-line InputErrors that name the path."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from .errors import InputError


def open_input(path: str | Path, what: str = "file", fix: str = "", expect: str = "") -> BinaryIO:
    """``open(path, "rb")``, or an InputError: "PATH: no such WHAT; FIX", or "PATH is a
    directory; give the path of EXPECT" (EXPECT defaults to WHAT)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}" + (f"; {fix}" if fix else "")) from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory; give the path of a {expect or what}") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None
