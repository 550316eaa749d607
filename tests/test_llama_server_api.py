"""llama-server's own API, asked of a bundle and of llama-server itself (the reference
build from bench/reference.sh) on the same SmolLM2 model: the same paths, the same shapes,
and with greedy sampling the same text and tokens. Its clients should not see a difference."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):"]
# What llama-server has that this server does not do (speculative decoding), by name.
NOT_HERE = {"llamacpp:spec_decode_num_accepted_tokens_total", "llamacpp:spec_decode_num_draft_tokens_total",
            "llamacpp:spec_decode_num_drafts_total"}  # fmt: skip


@pytest.fixture(scope="module")
def reference(reference_tools, chat_model):
    """llama-server on the same model, greedy-ready: 4 slots, metrics and slots on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(reference_tools / "llama-server"), "-m", str(chat_model), "--port", str(port), "-c", "4096",
         "-np", "4", "--metrics", "--slots", "--jinja", "--no-webui"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads(urllib.request.urlopen(url + "/health", timeout=2).read()).get("status") == "ok":
                break
        except (OSError, ValueError):
            time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError(f"llama-server did not start: {proc.stderr.read()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def post(url: str, path: str, body: dict, stream: bool = False):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    if stream:
        return status, [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    return status, json.loads(raw)


def get(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=30) as r:
        raw = r.read().decode()
    return raw if path == "/metrics" else json.loads(raw)


def keys(obj, prefix="") -> set[str]:
    if isinstance(obj, dict):
        out = set()
        for k, v in obj.items():
            out |= {prefix + k} | keys(v, prefix + k + ".")
        return out
    return keys(obj[0], prefix + "[].") if isinstance(obj, list) and obj else set()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_completion_matches_llama_server(chat_served, reference, prompt):
    body = {"prompt": prompt, "n_predict": 24, "temperature": 0, "return_tokens": True, "n_probs": 3}
    (sa, ours), (sb, ref) = post(chat_served.url, "/completion", body), post(reference, "/completion", body)
    assert sa == sb == 200
    assert (ours["content"], ours["tokens"], ours["stop_type"]) == (
        ref["content"],
        ref["tokens"],
        ref["stop_type"],
    )
    assert (ours["tokens_predicted"], ours["tokens_evaluated"], ours["prompt"]) == (
        ref["tokens_predicted"], ref["tokens_evaluated"], ref["prompt"])  # fmt: skip
    # Every field but llama-server's extra sampler settings (knobs this server lacks).
    assert {k for k in keys(ref) if not k.startswith("generation_settings.")} <= keys(ours)
    for a, b in zip(ours["completion_probabilities"], ref["completion_probabilities"], strict=True):
        assert (a["id"], a["token"], a["bytes"]) == (b["id"], b["token"], b["bytes"])
        assert [t["id"] for t in a["top_logprobs"]] == [t["id"] for t in b["top_logprobs"]]
        assert a["logprob"] == pytest.approx(b["logprob"], abs=2e-3)


def test_streamed_completion_and_a_stop_word_match(chat_served, reference):
    body = {"prompt": PROMPTS[0], "n_predict": 40, "temperature": 0, "stream": True, "stop": [" city"]}
    (_, ours), (_, ref) = (
        post(chat_served.url, "/completion", body, True),
        post(reference, "/completion", body, True),
    )
    assert "".join(e["content"] for e in ours) == "".join(e["content"] for e in ref)
    assert [e["stop"] for e in ours].count(True) == 1 and ours[-1]["stop"] is True
    for key in ("stop_type", "stopping_word", "tokens_predicted"):
        assert ours[-1][key] == ref[-1][key], key
    assert keys(ours[0]) >= keys(ref[0]) - {"tokens"}


def test_prompt_as_tokens_and_mixed(chat_served, reference):
    _, toks = post(reference, "/tokenize", {"content": "Once upon"})
    for prompt in (toks["tokens"], [*toks["tokens"], " a time"]):
        body = {"prompt": prompt, "n_predict": 12, "temperature": 0}
        assert (
            post(chat_served.url, "/completion", body)[1]["content"]
            == post(reference, "/completion", body)[1]["content"]
        )


@pytest.mark.parametrize(("path", "body"), [
    ("/tokenize", {"content": "Hello world, été!", "with_pieces": True}),
    ("/tokenize", {"content": "<|im_start|>hi", "add_special": True}),
    ("/detokenize", {"tokens": [19556, 905, 28]}),
    ("/apply-template", {"messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "hi"}]}),
])  # fmt: skip
def test_token_and_template_routes_match(chat_served, reference, path, body):
    assert post(chat_served.url, path, body) == post(reference, path, body)


def test_props_slots_and_metrics_have_llama_servers_fields(chat_served, reference):
    ours, ref = get(chat_served.url, "/props"), get(reference, "/props")
    for key in ("total_slots", "model_path", "chat_template", "bos_token", "eos_token", "build_info",
                "modalities", "default_generation_settings.n_ctx",
                "default_generation_settings.params"):  # fmt: skip
        assert key in keys(ours), key
    assert (ours["chat_template"], ours["total_slots"], ours["bos_token"]) == (
        ref["chat_template"], ref["total_slots"], ref["bos_token"])  # fmt: skip
    slots = get(chat_served.url, "/slots")
    assert len(slots) == len(get(reference, "/slots")) == 4
    assert all({"id", "n_ctx", "is_processing"} <= set(s) for s in slots)
    post(chat_served.url, "/completion", {"prompt": "Hi", "n_predict": 4})
    names = {}
    for url in (chat_served.url, reference):
        families = list(text_string_to_metric_families(get(url, "/metrics")))  # Prometheus' own parser
        names[url] = {s.name for f in families for s in f.samples if s.name.startswith("llamacpp:")}
    assert names[reference] - NOT_HERE <= names[chat_served.url]
    ours = {s.name: s.value for f in text_string_to_metric_families(get(chat_served.url, "/metrics"))
            for s in f.samples}  # fmt: skip
    assert ours["llamacpp:tokens_predicted_total"] >= 4 and ours["llamacpp:n_decode_total"] >= 4


def test_native_embeddings_match_openai_ones(chat_served):
    status, native = post(chat_served.url, "/embedding", {"content": ["a cat", "a dog"]})
    assert status == 200 and [e["index"] for e in native] == [0, 1]
    _, oai = post(chat_served.url, "/v1/embeddings", {"input": ["a cat", "a dog"]})
    _, content_form = post(chat_served.url, "/v1/embeddings", {"content": "a cat"})
    assert native[0]["embedding"] == [oai["data"][0]["embedding"]]
    assert content_form["data"][0]["embedding"] == oai["data"][0]["embedding"]


def test_unprefixed_aliases(chat_served, reference):
    chat = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 10, "temperature": 0}
    _, a = post(chat_served.url, "/chat/completions", chat)
    _, b = post(reference, "/chat/completions", chat)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"]["prompt_tokens_details"] == {"cached_tokens": a["timings"]["cache_n"]}
    assert set(b["timings"]) <= set(a["timings"])
    assert (
        get(chat_served.url, "/models")["data"][0]["id"]
        == get(chat_served.url, "/v1/models")["data"][0]["id"]
    )


def test_refusals_name_the_field(chat_served):
    for body, field in (({"prompt": "x", "mirostat": 2}, "mirostat"), ({"prompt": ["a", "b"]}, "prompt"),
                        ({"prompt": "x", "samplers": ["top_k"]}, "samplers")):  # fmt: skip
        status, err = post(chat_served.url, "/completion", body)
        assert status == 400 and err["error"]["param"] == field and field in err["error"]["message"]
