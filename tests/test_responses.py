"""OpenAI's Responses API end to end, with the official openai client against the real
SmolLM2 bundle: the same greedy answer as the chat API, a cut answer, the event stream,
function tools both ways, a JSON schema, and what the stateless server refuses."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.e2e

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
           "required": ["city"], "additionalProperties": False}  # fmt: skip
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": WEATHER}]  # fmt: skip
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 12}},
          "required": ["answer"], "additionalProperties": False}  # fmt: skip
QUESTION = "What is the capital of France?"
IMAGE = "data:image/png;base64,AA"


@pytest.fixture(scope="module")
def client(chat_served):
    return openai.OpenAI(base_url=chat_served.url + "/v1", api_key="unused", max_retries=0)


def _chat(client, messages, n):
    r = client.chat.completions.create(model="smol", messages=messages, temperature=0, max_tokens=n)
    return r.choices[0].message.content


@pytest.mark.parametrize("form", ["string", "items"])
def test_the_answer_is_the_chat_apis_greedy_answer(client, form):
    if form == "string":
        kwargs, messages = {"input": QUESTION}, [{"role": "user", "content": QUESTION}]
    else:
        parts = [{"type": "input_text", "text": QUESTION}]
        kwargs = {"instructions": "You are terse.", "input": [{"role": "user", "content": parts}]}
        messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUESTION}]
    r = client.responses.create(model="smol", temperature=0, max_output_tokens=16, **kwargs)
    assert r.object == "response" and r.id.startswith("resp_") and r.model
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.output_text == _chat(client, messages, 16)
    message = r.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert r.usage.input_tokens > 0 and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.store is False and r.temperature == 0 and r.max_output_tokens == 16


def test_a_cut_answer_is_incomplete(client):
    r = client.responses.create(
        model="smol", input="Tell me a long story.", max_output_tokens=4, temperature=0
    )
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4 and r.output[0].status == "incomplete"


def test_a_stream_tells_the_same_answer_in_order(client):
    ask = {"model": "smol", "input": QUESTION, "instructions": "Answer in one short sentence.",
           "temperature": 0, "max_output_tokens": 32}  # fmt: skip
    whole = client.responses.create(**ask)
    assert whole.status == "completed", whole.output_text  # the SDK's helper wants response.completed
    events = list(client.responses.create(stream=True, **ask))
    assert [e.sequence_number for e in events] == sorted({e.sequence_number for e in events})
    kinds = " ".join(e.type.removeprefix("response.") for e in events)
    assert re.fullmatch(r"created in_progress output_item\.added content_part\.added (output_text\.delta )+"
                        r"output_text\.done content_part\.done output_item\.done completed",
                        kinds), kinds  # fmt: skip
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == whole.output_text == events[-1].response.output_text
    assert events[-1].response.status == whole.status
    with client.responses.stream(**ask) as s:  # the SDK's helper checks that the events add up
        assert s.get_final_response().output_text == whole.output_text


def test_a_function_call_and_its_output_go_round(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.responses.create(model="smol", input=ask, tools=TOOLS, temperature=0, max_output_tokens=60,
                                tool_choice={"type": "function", "name": "get_weather"})  # fmt: skip
    calls = [item for item in r.output if item.type == "function_call"]
    assert r.status == "completed" and len(calls) == 1, r.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    made = {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments}
    back = [*ask, made, {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    r2 = client.responses.create(model="smol", input=back, tools=TOOLS, tool_choice="none", temperature=0,
                                 max_output_tokens=16)  # fmt: skip
    assert [item.type for item in r2.output] == ["message"] and r2.output_text
    chat_call = {
        "id": call.call_id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    answer = {"role": "tool", "tool_call_id": call.call_id, "name": call.name, "content": "Sunny, 21 C"}
    same = [*ask, {"role": "assistant", "content": None, "tool_calls": [chat_call]}, answer]
    assert r2.output_text == _chat(client, same, 16)


def test_a_json_schema_format_answers_valid_json(client):
    r = client.responses.create(
        model="smol", input=QUESTION, temperature=0, max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}},
    )  # fmt: skip
    assert r.status == "completed", r
    jsonschema.validate(json.loads(r.output_text), ANSWER)
    assert r.text.format.type == "json_schema"


@pytest.mark.parametrize("kwargs, named", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"tools": [{"type": "web_search"}]}, "web_search"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": IMAGE}]}]}, "input_image"),
])  # fmt: skip
def test_what_the_server_cannot_honour_is_refused(client, kwargs, named):
    kwargs = {"input": QUESTION, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="smol", **kwargs)
    assert named in e.value.message
