"""Tool calling end to end, with the official openai client against real SmolLM2 bundles:
its own ChatML template (the generic format) and, baked in with --chat-template, the
templates of three model families as llama.cpp ships them (Qwen 2.5: Hermes-style
<tool_call>; Llama 3.1: JSON calls; Mistral Nemo: [TOOL_CALLS]). The grammar makes the
calls well-formed whatever the model; these tests check that every part arrives right."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import jsonschema
import openai
import pytest

from conftest import ROOT, Served, run_cli

pytestmark = pytest.mark.e2e

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
           "unit": {"enum": ["c", "f"]}}, "required": ["city"], "additionalProperties": False}  # fmt: skip
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "system", "content": "You are a helpful assistant."},
       {"role": "user", "content": "What is the weather in Paris?"}]  # fmt: skip
FAMILIES = {
    "generic": None,
    "hermes": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "llama3": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "mistral": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
}


def _template(name: str, dest: Path) -> Path:
    sdist = Path((ROOT / ".venv" / "llama-cpp-python-sdist").read_text().strip())
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/models/templates/" + name))
        dest.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, chat_model, chat_bundle, stub, tmp_path_factory):
    name = FAMILIES[request.param]
    exe = chat_bundle
    if name:
        work = tmp_path_factory.mktemp(request.param)
        exe = work / "smol"
        run_cli(["build", str(chat_model), "-o", str(exe), "--runtime", str(stub),
                 "--chat-template", str(_template(name, work / name))], check=True)  # fmt: skip
    s = Served(exe)
    s.wait_ready()
    yield request.param, openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    s.stop()


def _check(call) -> dict:
    assert call.type == "function" and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


def test_a_required_call_is_made_and_its_arguments_validate(family):
    _, client = family
    r = client.chat.completions.create(
        model="smol", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=100
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert len(choice.message.tool_calls) == 1  # parallel_tool_calls is off unless asked for
    _check(choice.message.tool_calls[0])


def test_a_named_call_uses_that_tool(family):
    _, client = family
    r = client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=100,
        tool_choice={"type": "function", "function": {"name": "add"}},
    )
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "add" and set(_check(call)) == {"a", "b"}


def test_a_streamed_call_assembles_from_its_deltas(family):
    _, client = family
    calls, finish = {}, None
    for chunk in client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=100,
        stream=True,
    ):
        if not chunk.choices:
            continue
        for d in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            entry["id"] = d.id or entry["id"]
            entry["name"] = (d.function.name if d.function else None) or entry["name"]
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    whole = (
        client.chat.completions.create(
            model="smol", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=100
        )
        .choices[0]
        .message.tool_calls[0]
    )
    assert (calls[0]["name"], calls[0]["arguments"]) == (whole.function.name, whole.function.arguments)
    jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS[calls[0]["name"]])


def test_a_tool_result_gets_a_final_answer(family):
    _, client = family
    first = (
        client.chat.completions.create(
            model="smol", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=100
        )
        .choices[0]
        .message
    )
    call = first.tool_calls[0]
    follow = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})}]  # fmt: skip
    r = client.chat.completions.create(
        model="smol", messages=follow, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40
    )
    assert r.choices[0].finish_reason in ("stop", "length") and not r.choices[0].message.tool_calls


def test_tool_choice_none_answers_in_text(family):
    _, client = family
    r = client.chat.completions.create(
        model="smol", messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=30
    )
    assert not r.choices[0].message.tool_calls and r.choices[0].message.content is not None
    assert r.choices[0].finish_reason in ("stop", "length")  # (Nemo's format makes SmolLM2 stop at once)


def test_parallel_calls_when_asked_for(family):
    name, client = family
    r = client.chat.completions.create(
        model="smol",
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=True,
        temperature=0,
        max_tokens=200,
    )
    choice = r.choices[0]
    calls = choice.message.tool_calls or []
    complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]  # "length": the last may be cut
    assert calls and choice.finish_reason in ("tool_calls", "length")
    for call in complete:
        _check(call)
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize(
    "tools, choice, needle",
    [
        ([{"type": "function", "function": {"name": "bad name"}}], "auto", "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "objekt"}}}}}], "required",
         "cannot be turned into a grammar"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "not among 'tools'"),
    ],
)  # fmt: skip
def test_bad_tools_are_400s(family, tools, choice, needle):
    _, client = family
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="smol", messages=ASK, tools=tools, tool_choice=choice, max_tokens=5
        )
    assert needle in info.value.body["message"]
