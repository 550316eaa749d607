"""Anthropic's Messages API end to end, with the official anthropic client against a real
SmolLM2 bundle: the same answers as the chat API, stop reasons, streaming, tool use both
ways, token counting, refusals that name the field, and the API key.

This anthropic client has no ``temperature`` argument (newer Claude models dropped it), so
greedy decoding is asked for through ``extra_body``. Every request compared here is made
after the same prompt once, so each decodes from the same cached prefix (DEVELOPERS.md:
"Greedy output and the prompt cache")."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from conftest import Served

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0}
SYSTEM = "You are a helpful assistant."
CONVERSATION = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."},
                {"role": "user", "content": "And of Italy?"}]  # fmt: skip
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
           "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": False}  # fmt: skip
TOOLS = [{"name": "get_weather", "description": "The weather in a city", "input_schema": WEATHER}]
FORCED = {"type": "tool", "name": "get_weather"}  # one call: parallel calls only when asked for
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(chat_served):
    return anthropic.Anthropic(base_url=chat_served.url, api_key="unused", max_retries=0)


def converse(client, **fields):
    args = {"model": "smol", "max_tokens": 16, "system": SYSTEM, "messages": CONVERSATION, **fields}
    return client.messages.create(**args, extra_body=GREEDY)


@pytest.fixture(scope="module")
def answer(client):
    converse(client)  # the prompt cached
    return converse(client)


@pytest.fixture(scope="module")
def tool_call(client):
    def call():
        return client.messages.create(model="smol", max_tokens=48, tools=TOOLS, tool_choice=FORCED,
                                      messages=ASK, extra_body=GREEDY)  # fmt: skip

    call()  # the prompt cached
    return call()


def test_a_conversation_answers_as_the_chat_api_does(chat_served, client, answer):
    assert answer.id.startswith("msg_") and (answer.type, answer.role) == ("message", "assistant")
    assert [b.type for b in answer.content] == ["text"] and answer.content[0].text
    chat = openai.OpenAI(base_url=chat_served.url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}, *CONVERSATION]
    o = chat.chat.completions.create(model="smol", max_tokens=16, temperature=0, messages=messages)
    assert answer.content[0].text == o.choices[0].message.content
    assert answer.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[o.choices[0].finish_reason]
    usage = answer.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == o.usage.prompt_tokens
    assert usage.cache_creation_input_tokens == 0 and usage.output_tokens == o.usage.completion_tokens


def test_stop_sequences_and_max_tokens_say_why_the_reply_ended(client, answer):
    text = answer.content[0].text
    word = text.split()[2]
    m = converse(client, stop_sequences=["zzz", word])
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", word)
    assert m.content[0].text == text[: text.index(word)]
    m = converse(client, max_tokens=3)
    assert (m.stop_reason, m.stop_sequence, m.usage.output_tokens) == ("max_tokens", None, 3)
    assert text.startswith(m.content[0].text)


def test_a_streamed_reply_is_the_same_reply(client, answer):
    with client.messages.stream(model="smol", max_tokens=16, system=SYSTEM, messages=CONVERSATION,
                                extra_body=GREEDY) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == answer.content[0].text
    assert [b.text for b in final.content] == [text] and final.id.startswith("msg_")
    assert final.stop_reason == answer.stop_reason
    assert final.usage.model_dump() == answer.usage.model_dump()


def test_a_forced_tool_call_streams_the_same_input(client, tool_call):
    assert tool_call.stop_reason == "tool_use"
    (use,) = tool_call.content
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER)
    with client.messages.stream(model="smol", max_tokens=48, tools=TOOLS, tool_choice=FORCED, messages=ASK,
                                extra_body=GREEDY) as stream:  # fmt: skip
        events = list(stream)
        final = stream.get_final_message()
    partial = "".join(e.delta.partial_json for e in events
                      if e.type == "content_block_delta" and e.delta.type == "input_json_delta")  # fmt: skip
    assert json.loads(partial) == use.input
    assert final.stop_reason == "tool_use" and [b.input for b in final.content] == [use.input]


def test_a_tool_result_gets_a_text_answer(client, tool_call):
    use = tool_call.content[0]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 22 C"}
    back = [*ASK, {"role": "assistant", "content": tool_call.content}, {"role": "user", "content": [result]}]
    m = client.messages.create(model="smol", max_tokens=64, tools=TOOLS, messages=back, extra_body=GREEDY)
    assert m.stop_reason == "end_turn"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text


def test_count_tokens_counts_the_prompt(client, answer):
    short = client.messages.count_tokens(model="smol", messages=CONVERSATION[:1]).input_tokens
    full = client.messages.count_tokens(model="smol", system=SYSTEM, messages=CONVERSATION).input_tokens
    assert 0 < short < full == answer.usage.input_tokens + answer.usage.cache_read_input_tokens
    with_tools = client.messages.count_tokens(model="smol", messages=ASK, tools=TOOLS).input_tokens
    assert with_tools > client.messages.count_tokens(model="smol", messages=ASK).input_tokens


def test_what_cannot_be_honoured_is_a_400_that_names_it(client):
    with pytest.raises(anthropic.BadRequestError, match="'max_tokens' is required"):
        client.post("/v1/messages", body={"model": "smol", "messages": CONVERSATION}, cast_to=object)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with pytest.raises(anthropic.BadRequestError, match="'image' blocks are not supported"):
        client.messages.create(model="smol", max_tokens=8, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.BadRequestError, match="'thinking' is not supported") as e:
        client.messages.create(model="smol", max_tokens=8, messages=CONVERSATION,
                               thinking={"type": "enabled", "budget_tokens": 1024})  # fmt: skip
    assert e.value.body["error"]["type"] == "invalid_request_error"  # Anthropic's error shape


def test_the_api_key_is_checked(chat_bundle):
    s = Served(chat_bundle, "--api-key", "k")
    try:
        s.wait_ready()
        good = anthropic.Anthropic(base_url=s.url, api_key="k", max_retries=0)
        assert good.messages.create(model="smol", max_tokens=2, messages=ASK).usage.output_tokens == 2
        bad = anthropic.Anthropic(base_url=s.url, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            bad.messages.count_tokens(model="smol", messages=ASK)
    finally:
        s.stop()
