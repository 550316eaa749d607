"""The web chat's pure modules under Node.js, with `node --test`: the Markdown renderer
(templates/markdown.js, markdown-dom.js; tests/webchat_markdown.test.mjs) and reasoning
models' thinking (templates/reasoning.js, its saving in store.js;
tests/webchat_reasoning.test.mjs). Not end to end: no build, no browser
(test_webchat.py drives the page). install.sh installs Node.js."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import ROOT


def node() -> str:
    exe = shutil.which("node")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip() if exe else ""
    major = int(m.group(1)) if (m := re.match(r"v(\d+)\.", version)) else 0
    if major < 18:
        pytest.fail(
            f"Node.js 18 or later is needed for `node --test` (found {version or 'none'}); run ./install.sh"
        )
    return exe


@pytest.mark.parametrize(
    "suite, at_least", [("webchat_markdown.test.mjs", 8), ("webchat_reasoning.test.mjs", 5)]
)
def test_under_node(suite, at_least):
    proc = subprocess.run(
        [node(), "--test", str(ROOT / "tests" / suite)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.M)
    assert passed and int(passed.group(1)) >= at_least, out
    assert re.search(r"^# fail 0$", proc.stdout, re.M), out
