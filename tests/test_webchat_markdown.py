"""The web chat's Markdown renderer (templates/markdown.js, markdown-dom.js) under Node.js:
tests/webchat_markdown.test.mjs, run with `node --test`. Not end to end: no build, no browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

NODE_TEST = ROOT / "tests" / "webchat_markdown.test.mjs"


def node() -> str:
    exe = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if exe is None:
        pytest.skip("Node.js is not installed (`node`): the web chat's Markdown tests run under it")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    major = int(m.group(1)) if (m := re.match(r"v(\d+)\.", version)) else 0
    if major < 18:
        pytest.skip(f"Node.js {version} is too old for `node --test` (18 or later)")
    return exe


def test_markdown_renderer_under_node():
    proc = subprocess.run(
        [node(), "--test", str(NODE_TEST)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.M)
    assert passed and int(passed.group(1)) >= 8, out
    assert re.search(r"^# fail 0$", proc.stdout, re.M), out
