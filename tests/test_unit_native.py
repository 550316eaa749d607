"""llama-server's native API, CORS, API keys and /metrics without a model (fast)."""

from __future__ import annotations

import types

import pytest
from fakellama import EOG, FakeModel
from prometheus_client.parser import text_string_to_metric_families

from runtime.llama.job import Sampling, Stats
from runtime.server import api, cors, listen, native_completion
from runtime.server.metrics import Metrics


class Model(FakeModel):
    """One token per byte, whose piece is that byte."""

    def piece(self, token: int, *, special: bool = False) -> bytes:
        return bytes([token - 256]) if 256 <= token < 512 else super().piece(token)

    def eog_tokens(self) -> list[int]:
        return [EOG]


def parse(**body):
    return native_completion.parse(body, Sampling(), -1, Model(n_vocab=1000))


def test_prompt_forms():
    assert parse(prompt="hi").tokens == [256 + ord("h"), 256 + ord("i")]
    assert parse(prompt=[5, 7]).tokens == [5, 7] and parse(prompt=[[5, 7]]).tokens == [5, 7]
    assert parse(prompt=["hi"]).tokens == parse(prompt="hi").tokens
    assert parse(prompt=[1, "a", 2]).tokens == [1, 256 + ord("a"), 2]
    assert parse(prompt="ok").prompt == "ok"


@pytest.mark.parametrize("prompt", [None, "", [], ["a", "b"], [1, 1000], [True], [1.5], {"a": 1}])
def test_bad_prompts_are_400s(prompt):
    with pytest.raises(api.ApiError) as e:
        parse(prompt=prompt)
    assert e.value.status == 400 and e.value.param == "prompt"


def test_fields_map_to_the_job():
    r = parse(prompt="x", n_predict=5, temperature=0, top_k=3, seed=9, stop=["\n"], n_probs=2,
              return_tokens=True, stream=True, repeat_last_n=32)  # fmt: skip
    assert (r.max_tokens, r.sampling.temp, r.sampling.top_k, r.sampling.seed) == (5, 0, 3, 9)
    assert (r.stop, r.n_probs, r.return_tokens, r.stream, r.sampling.repeat_last_n) == (
        ["\n"],
        2,
        True,
        True,
        32,
    )
    assert parse(prompt="x").max_tokens == -1  # the server's default: until the model stops


def test_logit_bias_forms_and_ignore_eos():
    assert parse(prompt="x", logit_bias=[[5, -1.5], [6, False]]).logit_bias == {5: -1.5, 6: float("-inf")}
    assert parse(prompt="x", logit_bias=[["ab", 2]]).logit_bias == {256 + 97: 2.0, 256 + 98: 2.0}
    assert parse(prompt="x", logit_bias={"7": 1}).logit_bias == {7: 1.0}
    assert parse(prompt="x", ignore_eos=True).logit_bias == {EOG: float("-inf")}
    for bad in ([[5]], [[5, "x"]], [[5000, 1]], "5"):
        with pytest.raises(api.ApiError, match="logit_bias"):
            parse(prompt="x", logit_bias=bad)


def test_knobs_this_server_lacks_are_refused_unless_off():
    parse(prompt="x", mirostat=0, mirostat_tau=5.0, typical_p=1.0, dry_multiplier=0, dry_base=1.75,
          cache_prompt=False, id_slot=2, n_keep=4)  # fmt: skip
    for key, value in (
        ("mirostat", 2),
        ("typical_p", 0.5),
        ("dry_multiplier", 0.8),
        ("xtc_probability", 0.1),
    ):
        with pytest.raises(api.ApiError) as e:
            parse(prompt="x", **{key: value})
        assert e.value.param == key and key in e.value.message
    with pytest.raises(api.ApiError, match="'wat' is not supported"):
        parse(prompt="x", wat=1)


def test_cors_policy():
    p = cors.CorsPolicy("http://localhost:3000, https://App.example.com/")
    assert p.allows("http://localhost:3000") and p.allows("https://app.example.com")
    assert p.allows("https://app.example.com:443")
    assert (
        not p.allows("http://localhost:3001")
        and not p.allows("https://evil.example")
        and not p.allows("null")
    )
    assert cors.CorsPolicy("*").allows("https://any.example") and not cors.CorsPolicy("").allows("http://a")
    assert not cors.CorsPolicy("*").allows("null")
    assert cors.same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not cors.same_origin("http://127.0.0.1:8081", "127.0.0.1:8080")
    assert not cors.same_origin("https://127.0.0.1:8080", "127.0.0.1:8080")
    assert cors.allowed_headers("content-type, authorization, x-stainless-os") == (
        "content-type, authorization, x-stainless-os"
    )
    assert cors.allowed_headers("bad header\r\nx: y") == "Authorization, Content-Type, X-Api-Key"
    for bad in ("localhost:3000", "ftp://a.example", "http://a.example/path"):
        with pytest.raises(ValueError, match="not an origin"):
            cors.check_origins(bad)
    assert cors.check_origins("http://a.example, *") == "http://a.example, *"


def test_api_keys_by_either_header():
    assert api.key_matches({"Authorization": "Bearer k1"}, "k1")
    assert api.key_matches({"X-Api-Key": "k1"}, "k1")
    assert not api.key_matches({"Authorization": "Bearer k2"}, "k1")
    assert not api.key_matches({"Authorization": "k1"}, "k1") and not api.key_matches({}, "k1")
    assert not api.key_matches({"X-Api-Key": "k1é"}, "k1")


def test_errors_take_the_shape_of_their_api():
    e = api.ApiError(401, "no key", "authentication_error")
    assert api.error_body(e, "/v1/messages") == {
        "type": "error", "error": {"type": "authentication_error", "message": "no key"}}  # fmt: skip
    assert api.error_body(api.ApiError(500, "x"), "/v1/messages/count_tokens")["error"]["type"] == "api_error"
    assert api.error_body(e, "/v1/chat/completions") == e.body()


def test_hosts():
    assert listen.parse_hosts("127.0.0.1, ::1,[::1]") == ["127.0.0.1", "::1"]
    with pytest.raises(Exception, match="empty address"):
        listen.parse_hosts("127.0.0.1,")


def test_metrics_parse_with_prometheus_own_parser():
    m = Metrics()
    m.record(Stats(prompt_tokens=10, cached_tokens=4, completion_tokens=5, prompt_seconds=0.5,
                   generation_seconds=0.25))  # fmt: skip
    m.answered(200)
    m.answered(200)
    m.answered(404)
    slot = types.SimpleNamespace(state="generating")
    engine = types.SimpleNamespace(
        decodes=4, busy_per_decode=6, slots=[slot, types.SimpleNamespace(state="idle")]
    )
    worker = types.SimpleNamespace(engine=engine, status=lambda: {"queued": 3})
    families = {f.name: f for f in text_string_to_metric_families(m.render(worker))}
    value = {name: f.samples[0].value for name, f in families.items() if len(f.samples) == 1}
    assert value["llamacpp:prompt_tokens"] == 6 and value["llamacpp:prompt_tokens_cached"] == 4
    assert value["llamacpp:tokens_predicted"] == 5 and value["llamacpp:predicted_tokens_seconds"] == 20.0
    assert (
        value["llamacpp:prompt_tokens_seconds"] == 12.0 and value["llamacpp:n_busy_slots_per_decode"] == 1.5
    )
    assert value["llamacpp:requests_processing"] == 1 and value["llamacpp:requests_deferred"] == 3
    assert families["llamacpp:tokens_predicted"].type == "counter"
    codes = {s.labels["code"]: s.value for s in families["llamabundle:http_requests"].samples}
    assert codes == {"200": 2, "404": 1}
