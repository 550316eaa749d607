"""A model that carries a chat template is formatted by it (llama-cpp-python's
Jinja2 formatter), in the terminal chat and in the server alike."""

from __future__ import annotations

import json

import openai
import pytest
from ggufcopy import CHATML, copy_with

from conftest import PROMPT, Served, run_cli, run_exe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def templated_bundle(stub, model, tmp_path_factory):
    d = tmp_path_factory.mktemp("templated")
    gguf_path = copy_with(model, d / "stories-chatml.gguf", {"tokenizer.chat_template": CHATML})
    out = d / "chatml"
    run_cli(["build", str(gguf_path), "-o", str(out), "--runtime", str(stub)], check=True)
    return out


def test_info_reports_the_template(templated_bundle):
    info = json.loads(run_exe(templated_bundle, "--info", "--json").stdout)
    assert info["manifest"]["model"]["gguf"]["chat_template"] is True
    proc = run_exe(templated_bundle, "--cli", "--temp", "0", "-n", "4", input="hi\n/bye\n")
    assert proc.returncode == 0 and "no chat template" not in proc.stderr


def test_server_chat_applies_the_template(templated_bundle):
    s = Served(templated_bundle, "--temp", "0")
    try:
        s.wait_ready()
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        chat = c.chat.completions.create(model="stories-chatml", max_tokens=16,
                                         messages=[{"role": "user", "content": PROMPT}])  # fmt: skip
        rendered = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
        plain = c.completions.create(model="stories-chatml", prompt=rendered, max_tokens=16)
        assert chat.choices[0].message.content == plain.choices[0].text
        assert chat.usage.prompt_tokens == plain.usage.prompt_tokens
        untemplated = c.completions.create(model="stories-chatml", prompt=PROMPT, max_tokens=16)
        assert chat.usage.prompt_tokens > untemplated.usage.prompt_tokens
    finally:
        assert s.stop() == 0
