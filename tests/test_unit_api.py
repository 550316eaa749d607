"""OpenAI request checking (runtime/server/api.py), without a server: every bad field is
a 400 (404 for an unknown model) that names it."""

from __future__ import annotations

import base64
import struct

import pytest

from runtime.llama.job import Sampling, Stats
from runtime.server import api, shapes
from runtime.server.api import ApiError, check_model, completion_request, embedding_inputs
from runtime.server.chat_api import chat_request

DEFAULTS = Sampling(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, seed=-1)
USER = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return chat_request({"messages": USER, **fields}, DEFAULTS, -1)


def completion(**fields):
    return completion_request({"prompt": "Once", **fields}, DEFAULTS, 64)


def test_a_minimal_chat_request_takes_the_defaults():
    r = chat()
    assert r.messages == USER and r.prompt is None
    assert r.sampling == DEFAULTS and r.max_tokens == -1 and r.stop == []
    assert (r.stream, r.include_usage, r.echo) == (False, False, False)


def test_a_full_chat_request_carries_every_field():
    r = chat_request(
        {"messages": [{"role": "developer", "content": "be brief"},
                      {"role": "user", "content": [{"type": "text", "text": "a"},
                                                   {"type": "text", "text": "b"}]},
                      {"role": "assistant", "content": None}, {"role": "tool", "content": "42"}],
         "temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1, "repeat_penalty": 1.2, "seed": 2**40 + 5,
         "max_completion_tokens": 9, "max_tokens": 100, "stop": "END", "stream": True,
         "stream_options": {"include_usage": True}, "n": 1, "model": "anything"},
        DEFAULTS, -1,
    )  # fmt: skip
    assert r.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42", "tool_call_id": ""},
    ]
    assert r.sampling == Sampling(temp=0, top_p=0.5, top_k=7, min_p=0.1, repeat_penalty=1.2, seed=5)
    assert r.max_tokens == 9  # max_completion_tokens wins over max_tokens
    assert (r.stop, r.stream, r.include_usage) == (["END"], True, True)


def test_a_completion_request_carries_its_fields():
    r = completion(prompt=["Once upon"], echo=True, max_tokens=5, stop=["a", "b"], seed=-1)
    assert (r.prompt, r.messages, r.echo, r.max_tokens, r.stop) == ("Once upon", None, True, 5, ["a", "b"])
    assert r.sampling.seed == 0xFFFFFFFF  # a negative seed is taken modulo 2**32
    assert completion().max_tokens == 64  # the server's default


@pytest.mark.parametrize(
    "key, value, field_, expect",
    [("temperature", 2, "temp", 2), ("temperature", 0, "temp", 0), ("top_p", 1, "top_p", 1),
     ("top_p", 0.0, "top_p", 0.0), ("min_p", 1.0, "min_p", 1.0), ("top_k", 1_000_000, "top_k", 1_000_000),
     ("repeat_penalty", 10, "repeat_penalty", 10), ("seed", 2**64 - 1, "seed", 0xFFFFFFFF),
     ("seed", -(2**63), "seed", 0)],
)  # fmt: skip
def test_the_edges_of_each_range_are_accepted(key, value, field_, expect):
    assert getattr(chat(**{key: value}).sampling, field_) == expect


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [1, 2**31 - 1])
def test_the_edges_of_max_tokens_are_accepted(key, value):
    assert chat(**{key: value}).max_tokens == value


def test_nulls_mean_the_defaults():
    r = chat(temperature=None, max_tokens=None, stop=None, stream=None, stream_options=None, n=None)
    assert r.sampling == DEFAULTS and r.max_tokens == -1 and r.stop == [] and r.stream is False


BAD_COMMON = [
    ("temperature", "hot", "'temperature' must be a number"),
    ("temperature", 2.5, "'temperature' must be between 0 and 2, got 2.5"),
    ("temperature", -0.1, "'temperature' must be between 0 and 2"),
    ("temperature", True, "'temperature' must be a number"),
    ("temperature", float("nan"), "'temperature' must be a number"),
    ("temperature", float("inf"), "'temperature' must be a number"),
    ("top_p", 1.5, "'top_p' must be between 0 and 1"),
    ("top_p", [0.5], "'top_p' must be a number"),
    ("min_p", -1, "'min_p' must be between 0 and 1"),
    ("top_k", 1.5, "'top_k' must be an integer"),
    ("top_k", -1, "'top_k' must be between 0 and 1000000"),
    ("repeat_penalty", 11, "'repeat_penalty' must be between 0 and 10"),
    ("seed", 0.5, "'seed' must be an integer"),
    ("seed", 2**64, "'seed' must be between"),
    ("max_tokens", 0, "'max_tokens' must be between 1 and 2147483647, got 0"),
    ("max_tokens", 2**31, "'max_tokens' must be between 1"),
    ("max_tokens", "10", "'max_tokens' must be an integer"),
    ("max_tokens", 10.0, "'max_tokens' must be an integer"),
    ("max_completion_tokens", -5, "'max_completion_tokens' must be between 1"),
    ("n", 99, "'n' must be between 1 and 8"),
    ("n", True, "'n' must be an integer"),
    ("n", 0, "'n' must be between 1 and 8"),
    ("stop", "", "'stop' must be a non-empty string or a list of up to 4"),
    ("stop", ["a", ""], "'stop' must be"),
    ("stop", ["a", 1], "'stop' must be"),
    ("stop", ["a", "b", "c", "d", "e"], "'stop' must be"),
    ("stop", 7, "'stop' must be"),
    ("stop", {"a": 1}, "'stop' must be"),
    ("stream", "yes", "'stream' must be true or false"),
    ("stream", 1, "'stream' must be true or false"),
    ("stream_options", "usage", "'stream_options' must be an object"),
    ("stream_options", [1], "'stream_options' must be an object"),
]


@pytest.mark.parametrize("make", [chat, completion], ids=["chat", "completion"])
@pytest.mark.parametrize("key, value, message", BAD_COMMON, ids=[f"{k}={v!r}" for k, v, _ in BAD_COMMON])
def test_a_bad_field_is_a_400_naming_it(make, key, value, message):
    with pytest.raises(ApiError) as info:
        make(**{key: value})
    e = info.value
    assert e.status == 400 and e.param == key and e.message.startswith(message)
    assert e.body() == {"error": {"message": e.message, "type": "invalid_request_error", "param": key,
                                  "code": None}}  # fmt: skip


def test_a_bad_include_usage_names_include_usage():
    with pytest.raises(ApiError) as info:
        chat(stream=True, stream_options={"include_usage": "yes"})
    assert (info.value.status, info.value.param) == (400, "include_usage")


def test_stream_options_without_stream_are_accepted():
    """OpenAI refuses them; api.py, like llama-server, accepts them (nothing streams)."""
    r = chat(stream_options={"include_usage": True})
    assert (r.stream, r.include_usage) == (False, True)


BAD_MESSAGES = [
    ({}, "'messages' must be a non-empty list"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": "hi"}, "'messages' must be a non-empty list"),
    ({"messages": ["hi"]}, "messages[0] needs a role"),
    ({"messages": [*USER, {"content": "x"}]}, "messages[1] needs a role"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0] needs a role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "messages[0].content: only text parts are supported"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
     "messages[0].content: only text parts are supported"),
    ({"messages": [{"role": "user", "content": ["plain"]}]}, "messages[0].content: only text parts"),
]  # fmt: skip


@pytest.mark.parametrize("body, message", BAD_MESSAGES)
def test_bad_messages_are_a_400(body, message):
    with pytest.raises(ApiError) as info:
        chat_request(body, DEFAULTS, -1)
    assert info.value.status == 400 and info.value.param == "messages"
    assert info.value.message.startswith(message)


@pytest.mark.parametrize("prompt", [None, "", [], ["a", "b"], [1, 2], 5, {"text": "x"}])
def test_a_bad_prompt_is_a_400(prompt):
    body = {} if prompt is None else {"prompt": prompt}
    with pytest.raises(ApiError) as info:
        completion_request(body, DEFAULTS, 64)
    e = info.value
    assert (e.status, e.param, e.message) == (400, "prompt", "'prompt' must be a non-empty string")


def test_echo_must_be_a_boolean():
    with pytest.raises(ApiError) as info:
        completion(echo="true")
    assert (info.value.status, info.value.param) == (400, "echo")


# -- the model ---------------------------------------------------------------------
def test_check_model_accepts_the_served_ids_and_no_model():
    check_model({"model": "stories"})
    check_model({"model": "alias"})
    check_model({})


def test_any_model_name_is_answered_by_the_one_model():
    """A bundle serves one model; like llama-server it answers whatever name a client sends."""
    for name in ("gpt-4", "", "../etc/passwd"):
        check_model({"model": name})


def test_a_model_that_is_not_a_string_is_a_400():
    with pytest.raises(ApiError) as info:
        check_model({"model": 3})
    assert (info.value.status, info.value.param, info.value.message) == (
        400,
        "model",
        "'model' must be a string",
    )


# -- embeddings and the body ---------------------------------------------------------
def test_embedding_inputs():
    assert embedding_inputs({"input": "a"}) == (["a"], "float")
    assert embedding_inputs({"input": ["a", "b"], "encoding_format": "base64"}) == (["a", "b"], "base64")
    assert embedding_inputs({"input": ["a"], "encoding_format": None}) == (["a"], "float")
    assert embedding_inputs({"input": ["x"] * 256})[0] == ["x"] * 256


@pytest.mark.parametrize(
    "body, param, message",
    [({}, "input", "'input' must be a non-empty string"), ({"input": ""}, "input", "'input' must be"),
     ({"input": []}, "input", "'input' must be"), ({"input": ["a", ""]}, "input", "'input' must be"),
     ({"input": [[1, 2]]}, "input", "'input' must be"),
     ({"input": ["x"] * 257}, "input", "'input' may hold at most 256 strings"),
     ({"input": "a", "encoding_format": "int8"}, "encoding_format",
      "'encoding_format' must be 'float' or 'base64'")],
)  # fmt: skip
def test_bad_embedding_inputs_are_a_400(body, param, message):
    with pytest.raises(ApiError) as info:
        embedding_inputs(body)
    assert (info.value.status, info.value.param) == (400, param) and info.value.message.startswith(message)


@pytest.mark.parametrize(
    "raw, message",
    [(b"\xff\xfe", "the request body is not valid UTF-8"), (b"{", "the request body is not valid JSON"),
     (b"[1]", "the request body must be a JSON object"), (b"null", "the request body must be a JSON object")],
)  # fmt: skip
def test_a_bad_body_is_a_400(raw, message):
    with pytest.raises(ApiError) as info:
        api.parse_body(raw)
    assert info.value.status == 400 and info.value.message.startswith(message)


def test_parse_body():
    assert api.parse_body('{"a": "é"}'.encode()) == {"a": "é"}


# -- responses ---------------------------------------------------------------------
def test_usage_timings_and_finish():
    s = Stats(prompt_tokens=10, cached_tokens=4, completion_tokens=5, prompt_seconds=0.5,
              generation_seconds=0.25, finish_reason="length")  # fmt: skip
    assert shapes.usage(s) == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    t = shapes.timings(s)
    assert (t["prompt_n"], t["cache_n"], t["predicted_n"]) == (6, 4, 5)
    assert (t["prompt_per_second"], t["predicted_per_second"], t["prompt_ms"]) == (12.0, 20.0, 500.0)
    assert shapes.finish(s) == "length"
    for reason in ("stop", "cancelled"):
        assert shapes.finish(Stats(finish_reason=reason)) == "stop"
    assert shapes.timings(Stats())["prompt_per_second"] == 0.0  # no division by zero


def test_embedding_item_in_both_encodings():
    vec = [0.5, -1.25]
    assert shapes.embedding_item(2, vec, "float") == {"object": "embedding", "index": 2, "embedding": vec}
    data = shapes.embedding_item(0, vec, "base64")["embedding"]
    assert list(struct.unpack("<2f", base64.b64decode(data))) == vec


def test_envelope_and_ids():
    env = shapes.envelope("chat.completion", "r1", "m", "fp", choices=[])
    assert {k: env[k] for k in ("id", "object", "model", "system_fingerprint", "choices")} == {
        "id": "r1",
        "object": "chat.completion",
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [],
    }
    a, b = shapes.new_id("cmpl"), shapes.new_id("cmpl")
    assert a.startswith("cmpl-") and len(a) == 29 and a != b
