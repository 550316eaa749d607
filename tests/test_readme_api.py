"""The README's "Structured output, tools, ..." examples, run as written (only the address
and the bundle's path are put in) against a real SmolLM2 bundle."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e
SECTION = "## Structured output, tools, log-probabilities and reasoning"


def _blocks(kind: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{kind}\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def smol(chat_served):
    return chat_served


def test_the_section_has_its_examples():
    assert len(_blocks("python")) == 2 and len(_blocks("sh")) == 4


@pytest.mark.parametrize("index", range(4))
def test_shell_examples(smol, chat_bundle, index):
    block = (
        _blocks("sh")[index].replace("http://127.0.0.1:8080", smol.url).replace("./smol", str(chat_bundle))
    )
    for line in block.strip().splitlines():
        proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (line, proc.stderr)
        out = json.loads(proc.stdout)
        assert "error" not in out, out
        if "--json-schema" in line:
            assert isinstance(out["name"], str)
        elif "response_format" in line:
            assert set(json.loads(out["choices"][0]["message"]["content"])) >= {"name", "age"}
        elif "grammar" in line:
            assert out["choices"][0]["text"] in ("yes", "no")
        elif "top_logprobs" in line:
            assert len(out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 3
        elif "tokenize" in line:
            assert [t["piece"] for t in out["tokens"]] == ["Hello", " world"]


@pytest.mark.parametrize("index", range(2))
def test_python_examples(smol, index):
    code = _blocks("python")[index].replace("http://127.0.0.1:8080", smol.url)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the example printed nothing"
