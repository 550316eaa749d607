"""The web chat's handling of reasoning models' thinking (templates/reasoning.js, and its
saving in store.js) under Node.js: tests/webchat_reasoning.test.mjs, run with
`node --test`. Not end to end: no build, no browser (test_webchat.py drives the page)."""

from __future__ import annotations

import re
import subprocess

from test_webchat_markdown import node

from conftest import ROOT

NODE_TEST = ROOT / "tests" / "webchat_reasoning.test.mjs"


def test_reasoning_under_node():
    proc = subprocess.run(
        [node(), "--test", str(NODE_TEST)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = re.search(r"^# pass (\d+)$", proc.stdout, re.M)
    assert passed and int(passed.group(1)) >= 5, out
    assert re.search(r"^# fail 0$", proc.stdout, re.M), out
