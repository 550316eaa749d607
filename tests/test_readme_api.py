"""The README's API examples ("The web chat and the API" and "Structured output, tools,
..."), run as written (only the address and the bundle's path are put in) against a real
SmolLM2 bundle; and its endpoint table checked against the server's route table."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e
SECTION = "## Structured output, tools, log-probabilities and reasoning"
API = "## The web chat and the API"


def _section(title: str) -> str:
    return (ROOT / "README.md").read_text().split(title, 1)[1].split("\n## ", 1)[0]


def _blocks(kind: str, title: str = SECTION) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", _section(title), re.S)


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


def test_the_api_section_lists_every_route():
    from runtime.server.routes import ROUTES

    rows = [line for line in _section(API).splitlines() if line.startswith("| `")]
    listed = set()
    for row in rows:
        first, _, also = row.strip("|").split("|")
        for method, path in re.findall(r"`(GET|POST) (/[\w/-]*)`", first):
            listed.add((method, path))
            listed |= {(method, alias) for alias in re.findall(r"`(/[\w/-]*)`", also)}
    assert listed == set(ROUTES), set(ROUTES) ^ listed


def _run_curl(smol, line: str) -> str:
    proc = subprocess.run(["bash", "-c", line.replace("http://127.0.0.1:8080", smol.url)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, (line, proc.stderr)
    return proc.stdout


API_LINES = [line for block in _blocks("sh", API) for line in block.strip().splitlines()]


@pytest.mark.parametrize("line", API_LINES, ids=[re.search(r"8080(/\S*)", x).group(1) for x in API_LINES])
def test_api_shell_examples(smol, line):
    path = re.search(r"8080(/\S*)", line).group(1)
    out = _run_curl(smol, line)
    if path == "/metrics":
        from prometheus_client.parser import text_string_to_metric_families

        names = {f.name for f in text_string_to_metric_families(out)}
        assert "llamacpp:tokens_predicted" in names
        return
    if '"stream": true' in line:
        events = [
            json.loads(x[6:]) for x in out.splitlines() if x.startswith("data: ") and x != "data: [DONE]"
        ]
        assert events and all("error" not in e for e in events)
        assert "".join(e["choices"][0]["text"] for e in events if e["choices"]).strip()
        return
    body = json.loads(out)
    if isinstance(body, dict):  # (a Responses object has "error": null)
        assert body.get("error") is None and body.get("type") != "error", body
    check = {
        "/health": lambda b: b["status"] == "ok",
        "/v1/models": lambda b: len(b["data"]) == 1,
        "/v1/chat/completions": lambda b: b["choices"][0]["message"]["content"],
        "/v1/embeddings": lambda b: len(b["data"][0]["embedding"]) > 0,
        "/v1/responses": lambda b: b["output"][0]["content"][0]["text"],
        "/v1/messages": lambda b: b["content"][0]["text"] and b["stop_reason"],
        "/v1/messages/count_tokens": lambda b: b["input_tokens"] > 3,
        "/completion": lambda b: b["content"] and len(b["completion_probabilities"][0]["top_logprobs"]) == 2,
        "/detokenize": lambda b: b["content"] == "Hello world",
        "/apply-template": lambda b: "Say hello." in b["prompt"],
        "/embedding": lambda b: len(b[0]["embedding"][0]) > 0,
        "/props": lambda b: b["total_slots"] >= 1 and b["chat_template"],
        "/slots": lambda b: len(b) >= 1 and "is_processing" in b[0],
    }[path]
    assert check(body), body


@pytest.mark.parametrize("index", range(2))
def test_api_python_examples(smol, index):
    code = _blocks("python", API)[index].replace("http://127.0.0.1:8080", smol.url)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "the example printed nothing"
