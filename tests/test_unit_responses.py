"""OpenAI's Responses API without a model (runtime/server/responses.py, responses_stream.py):
a request as the chat request it becomes, the output items and events a reply makes, and
every field the server cannot honour as a 400 that names it."""

from __future__ import annotations

import copy
import json

import pytest

from runtime.llama.job import Job, Sampling, Stats
from runtime.server import responses
from runtime.server.api import ApiError
from runtime.server.generate import Prepared
from runtime.server.reply import Reply
from runtime.server.responses_stream import Items, stream

DEFAULTS = Sampling()
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"type": "function", "name": "get_weather", "description": "The weather", "parameters": WEATHER}


def request(**fields):
    return responses.request({"input": "hi", **fields}, DEFAULTS, 64)


def refused(param: str, **fields) -> str:
    with pytest.raises(ApiError) as e:
        request(**fields)
    assert e.value.status == 400 and e.value.param == param, e.value.message
    return e.value.message


def test_a_string_input_is_one_user_message_with_the_defaults():
    req, echo = request()
    assert req.messages == [{"role": "user", "content": "hi"}]
    assert (req.sampling, req.max_tokens, req.stream) == (DEFAULTS, 64, False)
    assert req.tools == [] and req.grammar is None
    assert echo["store"] is False and echo["tool_choice"] == "auto"
    assert echo["text"] == {"format": {"type": "text"}}
    assert (echo["temperature"], echo["top_p"], echo["max_output_tokens"]) == (0.8, 0.95, None)


def test_items_become_chat_messages():
    req, echo = request(
        instructions="Be brief.", temperature=0, top_p=0.5, max_output_tokens=9, stream=True,
        metadata={"k": "v"}, user="u", store=True, reasoning={"effort": "low", "summary": "auto"},
        input=[
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                                             {"type": "input_text", "text": "in Paris?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": []},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": ""},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": ""}]},
        ],
    )  # fmt: skip
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
        {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": {}}},
    ]
    assert req.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},  # one turn: text and calls
        {"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "weather"},
        {"role": "tool", "content": "", "tool_call_id": "c2", "name": "weather"},
    ]
    assert req.sampling == Sampling(temp=0, top_p=0.5) and req.max_tokens == 9 and req.stream
    assert echo["instructions"] == "Be brief." and echo["max_output_tokens"] == 9
    assert (echo["metadata"], echo["user"], echo["store"]) == ({"k": "v"}, "u", False)  # nothing is kept
    assert echo["reasoning"] == {"effort": "low", "summary": "auto"}


def test_calls_without_a_text_are_one_assistant_message():
    req, _ = request(input=[
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "b", "name": "g", "arguments": "{}"},
    ])  # fmt: skip
    assert [m["role"] for m in req.messages] == ["user", "assistant"]
    assert [c["id"] for c in req.messages[1]["tool_calls"]] == ["a", "b"]


def test_function_tools_become_chat_tools():
    req, echo = request(tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"},
                        parallel_tool_calls=True)  # fmt: skip
    fn = {"name": "get_weather", "description": "The weather", "parameters": WEATHER}
    assert req.tools == [{"type": "function", "function": fn}]
    assert req.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert req.parallel_tool_calls and echo["parallel_tool_calls"]
    assert echo["tools"] == [{**TOOL, "strict": True}]
    assert echo["tool_choice"] == {"type": "function", "name": "get_weather"}
    none, _ = request(tools=[TOOL], tool_choice="none")
    assert none.tools == [] and none.tool_choice == "none"


@pytest.mark.parametrize("fmt, schema", [
    ({"type": "json_object"}, {"type": "object"}),
    ({"type": "json_schema", "name": "w", "schema": WEATHER, "strict": True}, WEATHER),
])  # fmt: skip
def test_a_json_text_format_is_a_grammar(fmt, schema):
    req, echo = request(text={"format": fmt})
    assert req.grammar and req.json_schema == schema
    assert echo["text"] == {"format": fmt}


@pytest.mark.parametrize("fields, param, words", [
    ({"previous_response_id": "resp_1"}, "previous_response_id", "stateless"),
    ({"conversation": "conv_1"}, "conversation", "stateless"),
    ({"background": True}, "background", "background"),
    ({"include": ["message.output_text.logprobs"]}, "include", "include"),
    ({"top_logprobs": 3}, "top_logprobs", "top_logprobs"),
    ({"truncation": "auto"}, "truncation", "disabled"),
    ({"seed": 1}, "seed", "'seed' is not supported"),
    ({"prompt": {"id": "p"}}, "prompt", "'prompt'"),
    ({"tools": [{"type": "web_search"}]}, "tools", "'web_search' tools are not supported"),
    ({"tools": [{**TOOL, "defer_loading": True}]}, "tools", "tools[0].defer_loading"),
    ({"tools": [{**TOOL, "name": "a b"}]}, "tools", "tools[0].name must be"),
    ({"tools": [TOOL, TOOL]}, "tools", "same name"),
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice", "'nope'"),
    ({"tools": [TOOL], "tool_choice": {"type": "web_search_preview"}}, "tool_choice", "must be"),
    ({"tools": [TOOL], "text": {"format": {"type": "json_object"}}}, "tools", "do not go together"),
    ({"text": {"verbosity": "low"}}, "text", "text.verbosity"),
    ({"text": {"format": {"type": "xml"}}}, "text.format", "must be"),
    ({"text": {"format": {"type": "json_schema", "schema": WEATHER}}}, "text.format", "'name'"),
    ({"reasoning": {"summary": "detailed"}}, "reasoning", "summary"),
    ({"reasoning": {"generate_summary": "auto"}}, "reasoning", "generate_summary"),
    ({"temperature": 3}, "temperature", "between 0 and 2"),
    ({"max_output_tokens": 0}, "max_output_tokens", "between 1"),
    ({"metadata": "x"}, "metadata", "object"),
    ({"instructions": 1}, "instructions", "string"),
    ({"input": []}, "input", "non-empty"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input", "input[0] needs a role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input",
     "input[0].content[0]: input_image"),
    ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input", "input_file"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input", "stateless"),
    ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input", "'web_search_call' items"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "input",
     "input[0].arguments is not valid JSON"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input", "call_id"),
])  # fmt: skip
def test_what_the_server_cannot_honour_is_a_400_naming_it(fields, param, words):
    assert words in refused(param, **fields)


# -- output items and events ------------------------------------------------------------
def record():
    events = []

    def emit(kind, **fields):
        events.append({"type": kind, **copy.deepcopy(fields)})

    return Items(emit), events


def test_reasoning_text_and_calls_become_items_in_order():
    items, events = record()
    items.feed([{"reasoning_content": "Hmm, "}, {"reasoning_content": "Paris."}, {"content": "Let me look."}])
    items.feed([{"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]}])  # fmt: skip
    items.feed([{"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}])  # fmt: skip
    items.close()
    rs, msg, fc = items.output
    assert rs["type"] == "reasoning" and rs["id"].startswith("rs_") and rs["summary"] == []
    assert rs["content"] == [{"type": "reasoning_text", "text": "Hmm, Paris."}]
    assert msg["id"].startswith("msg_") and (msg["role"], msg["status"]) == ("assistant", "completed")
    part = {"type": "output_text", "text": "Let me look.", "annotations": [], "logprobs": []}
    assert msg["content"] == [part]
    assert fc == {"type": "function_call", "id": fc["id"], "call_id": "call_1", "name": "get_weather",
                  "arguments": '{"city": "Paris"}', "status": "completed"}  # fmt: skip
    assert [e["type"].removeprefix("response.") for e in events] == [
        "output_item.added", "content_part.added", "reasoning_text.delta", "reasoning_text.delta",
        "reasoning_text.done", "content_part.done", "output_item.done",
        "output_item.added", "content_part.added", "output_text.delta",
        "output_text.done", "content_part.done", "output_item.done",
        "output_item.added", "function_call_arguments.delta", "function_call_arguments.delta",
        "function_call_arguments.done", "output_item.done",
    ]  # fmt: skip
    added = events[7]
    assert added["output_index"] == 1 and added["item"]["content"] == []
    assert added["item"]["status"] == "in_progress"
    delta = events[9]
    assert delta == {"type": "response.output_text.delta", "item_id": msg["id"], "output_index": 1,
                     "content_index": 0, "delta": "Let me look.", "logprobs": []}  # fmt: skip
    assert events[16]["arguments"] == '{"city": "Paris"}' and events[17]["item"] == fc


def test_a_cut_reply_leaves_its_last_item_incomplete():
    items, events = record()
    items.feed([{"content": "Once upon"}])
    items.close("incomplete")
    assert items.output[0]["status"] == "incomplete" and events[-1]["item"]["status"] == "incomplete"


class FakeHandler:
    def __init__(self):
        self.events, self.started = [], False

    def start_events(self):
        self.started = True

    def send_event(self, obj, event=None):
        assert event == obj["type"]
        self.events.append(json.loads(json.dumps(obj)))

    def send_json(self, status, obj):
        self.sent = (status, obj)


class FakeApp:
    model_id = "smol"

    def __init__(self, pieces, finish="stop", fail=None):
        self.pieces, self.finish, self.fail = pieces, finish, fail

    def run(self, h, jobs):
        for text in self.pieces:
            yield 0, ("piece", text, [])
        if self.fail:
            raise self.fail
        stats = jobs[0].stats = Stats(prompt_tokens=5, cached_tokens=2, completion_tokens=3)
        stats.finish_reason = self.finish
        yield 0, ("done", stats)


def prepared():
    req, _ = request()
    return Prepared(req, "", [], [Job("generate")], [Reply(split_reasoning=True)])


def answer(app, streamed: bool):
    """A response through the whole path or the streaming one (with its events)."""
    h, p, shell = FakeHandler(), prepared(), {"id": "resp_1", "status": "in_progress", "output": []}

    def done(items, stats):
        return responses.finished(shell, items, stats, lambda text: len(text.split()))

    if streamed:
        stream(app, h, p, shell, done)
        return h.events
    h.send_json(200, responses._whole(app, h, p, done))
    return h.sent[1]


@pytest.mark.parametrize("finish, status", [("stop", "completed"), ("length", "incomplete")])
def test_a_stream_ends_with_the_response_a_whole_answer_gives(finish, status):
    pieces = ["<think>Two ", "words.</think>", "Hello", " there"]
    events = answer(FakeApp(pieces, finish), streamed=True)
    whole = answer(FakeApp(pieces, finish), streamed=False)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[1]["type"] == "response.in_progress"
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]
    assert final["type"] == f"response.{status}" and final["response"]["status"] == status
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Hello there" == whole["output"][1]["content"][0]["text"]
    strip = [{k: v for k, v in item.items() if k != "id"} for item in whole["output"]]
    assert [{k: v for k, v in item.items() if k != "id"} for item in final["response"]["output"]] == strip
    assert whole["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2},
                              "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 2},
                              "total_tokens": 8}  # fmt: skip
    cut = finish == "length"
    assert whole["incomplete_details"] == ({"reason": "max_output_tokens"} if cut else None)
    assert whole["output"][1]["status"] == status


def test_a_failure_mid_stream_is_an_error_event():
    events = answer(FakeApp(["Hi"], fail=ApiError(500, "generation failed: boom", "server_error")), True)
    assert events[-1] == {"type": "error", "sequence_number": len(events) - 1, "code": "server_error",
                          "message": "generation failed: boom", "param": None}  # fmt: skip


def test_an_error_before_any_output_is_a_status_not_a_stream():
    h = FakeHandler()
    with pytest.raises(ApiError):
        stream(FakeApp([], fail=ApiError(400, "bad grammar")), h, prepared(), {}, None)
    assert not h.started and h.events == []
