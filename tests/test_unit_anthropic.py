"""Anthropic's Messages API (runtime/server/anthropic*.py) without a model: the request as
the chat request it becomes, every field it cannot honour a 400 that names it, and the
reply's blocks, stop reasons and stream events from scripted model output."""

from __future__ import annotations

import json

import pytest

from runtime.llama.job import Sampling, Stats
from runtime.llama.templates import Prompt
from runtime.server import anthropic, anthropic_stream
from runtime.server.api import ApiError

DEFAULTS = Sampling(temp=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0, seed=-1)
USER = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL = {"name": "get_weather", "description": "The weather", "input_schema": WEATHER}
CACHED_D = {"type": "text", "text": "d", "cache_control": {"type": "ephemeral"}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def req(counting=False, **fields):
    body = {"messages": USER, **({} if counting else {"max_tokens": 16}), **fields}
    return anthropic.chat_request(body, DEFAULTS, counting=counting)


def refused(**fields) -> ApiError:
    with pytest.raises(ApiError) as e:
        req(**fields)
    assert e.value.status == 400
    return e.value


# -- the request --------------------------------------------------------------------
def test_a_request_becomes_a_chat_request():
    r = req(model="claude-anything", system="be brief", temperature=0, top_p=0.5, top_k=7, stream=True,
            stop_sequences=["END"], metadata={"user_id": "u"}, service_tier="auto",
            messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": [{"type": "text", "text": "c"}, CACHED_D]}])  # fmt: skip
    assert r.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"},
                          {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c\n\nd"}]  # fmt: skip
    assert r.sampling == Sampling(temp=0, top_k=7, top_p=0.5, min_p=0.05, repeat_penalty=1.0, seed=-1)
    assert (r.max_tokens, r.stop, r.stream, r.n, r.tools, r.tool_choice) == (16, ["END"], True, 1, [], "auto")


def test_system_blocks_and_consecutive_turns_are_joined():
    r = req(system=[{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])  # fmt: skip
    assert r.messages == [{"role": "system", "content": "one\n\ntwo"}, {"role": "user", "content": "a\n\nb"}]
    assert req(system="").messages == USER  # no system text: no system message


def test_tool_use_and_tool_results_become_calls_and_tool_messages():
    r = req(tools=[TOOL], messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no such city"}]},
            {"type": "text", "text": "and?"}]},
    ])  # fmt: skip
    calls = [{"id": f"toolu_{i}", "type": "function",
              "function": {"name": "get_weather", "arguments": {"city": c}}}
             for i, c in ((1, "Paris"), (2, "Rome"))]  # fmt: skip
    assert r.messages == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": calls},  # thinking is dropped
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no such city"},
        {"role": "user", "content": "and?"},
    ]
    fn = {"name": "get_weather", "description": "The weather", "parameters": WEATHER}
    assert r.tools == [{"type": "function", "function": fn}]


@pytest.mark.parametrize("choice, expected, parallel", [
    (None, "auto", False), ({"type": "auto"}, "auto", False), ({"type": "any"}, "required", False),
    ({"type": "any", "disable_parallel_tool_use": False}, "required", True),
    ({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
     {"type": "function", "function": {"name": "get_weather"}}, False),
])  # fmt: skip
def test_tool_choice_maps_to_openai_and_allows_parallel_calls_only_when_asked(choice, expected, parallel):
    r = req(tools=[TOOL], tool_choice=choice)
    assert (r.tool_choice, r.parallel_tool_calls) == (expected, parallel)


def test_tool_choice_none_keeps_the_tools_out_of_the_prompt():
    r = req(tools=[TOOL], tool_choice={"type": "none"})
    assert (r.tools, r.tool_choice) == ([], "none")


def test_output_config_format_is_a_json_grammar():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = req(output_config={"format": {"type": "json_schema", "schema": schema}})
    assert r.json_schema == schema and "root" in r.grammar
    assert req(output_config={"format": None}).grammar is None


def test_count_tokens_needs_no_max_tokens_but_takes_no_sampling():
    assert req(counting=True, system="s", tools=[TOOL]).messages[0] == {"role": "system", "content": "s"}
    with pytest.raises(ApiError) as e:
        req(counting=True, temperature=0)
    assert e.value.param == "temperature"


@pytest.mark.parametrize("fields, param, words", [
    ({"max_tokens": None}, "max_tokens", "'max_tokens' is required"),
    ({"max_tokens": 0}, "max_tokens", "between 1"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking", "'thinking' is not supported"),
    ({"container": "c"}, "container", "'container'"),
    ({"mcp_servers": []}, "mcp_servers", "'mcp_servers'"),
    ({"seed": 1}, "seed", "'seed'"),  # OpenAI's, not Anthropic's
    ({"temperature": 3}, "temperature", "'temperature' must be between 0 and 2"),
    ({"top_k": 1.5}, "top_k", "'top_k' must be an integer"),
    ({"stream": "yes"}, "stream", "'stream'"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences", "up to 4"),
    ({"stop_sequences": [""]}, "stop_sequences", "non-empty"),
    ({"model": 3}, "model", "'model' must be a string"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages", "goes in 'system'"),
    ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages",
     "only 'role' and 'content'"),
    ({"messages": [{"role": "user", "content": None}]}, "messages", "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "messages",
     "messages[0].content[0]: 'image' blocks are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages",
     "'document' blocks"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}]}]},
     "messages", "'tool_use' blocks are not supported here"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "citations": [{}]}]}]},
     "messages", "messages[0].content[0].citations is not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                               "content": [{"type": "image", "source": {}}]}]}]},
     "messages", "messages[0].content[0].content[0]: 'image' blocks"),
    ({"messages": [{"role": "assistant",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "x"}]}]},
     "messages", "input must be an object"),
    ({"system": [{"type": "image"}]}, "messages", "system[0]: 'image' blocks"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools", "server tool"),
    ({"tools": [{**TOOL, "input_examples": []}]}, "tools", "tools[0].input_examples is not supported"),
    ({"tools": [{"name": "a b", "input_schema": {}}]}, "tools", "tools[0].name"),
    ({"tools": [{"name": "f"}]}, "tools", "tools[0].input_schema"),
    ({"tools": [TOOL, TOOL]}, "tools", "same name"),
    ({"tool_choice": {"type": "any"}}, "tool_choice", "needs 'tools'"),
    ({"output_config": {"effort": "high"}}, "output_config", "output_config.effort is not supported"),
    ({"output_config": {"format": {"type": "json_object"}}}, "output_config", "output_config.format must be"),
    ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "$ref": "http://x"}}}},
     "output_config", "output_config.format.schema"),
    ({"tools": [TOOL], "output_config": {"format": {"type": "json_schema", "schema": {}}}}, "output_config",
     "do not go together"),
    ({"tool_choice": "auto"}, "tool_choice", "'tool_choice' must be"),
    ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice", "'nope'"),
    ({"tools": [TOOL], "tool_choice": {"type": "auto", "name": "get_weather"}}, "tool_choice",
     "tool_choice.name"),
])  # fmt: skip
def test_what_cannot_be_honoured_is_a_400_that_names_it(fields, param, words):
    e = refused(**fields)
    assert e.param == param and words in e.message, e.message


# -- the reply ----------------------------------------------------------------------
@pytest.mark.parametrize("finish, word, calls, expected", [
    ("stop", None, False, ("end_turn", None)),
    ("stop", "<|im_end|>", False, ("end_turn", None)),  # the template's end marker, not the request's
    ("stop", "END", False, ("stop_sequence", "END")),
    ("stop", None, True, ("tool_use", None)),
    ("length", None, True, ("max_tokens", None)),
])  # fmt: skip
def test_stop_reasons(finish, word, calls, expected):
    stats = Stats(finish_reason=finish, stop_word=word)
    assert anthropic_stream.stop_reason(stats, ["END"], calls) == expected


def test_blocks_follow_the_order_the_model_wrote_them():
    b = anthropic_stream.Blocks()
    deltas = [{"reasoning_content": "think"}, {"reasoning_content": "ing"}, {"content": "Hi"},
              {"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                               "function": {"name": "f", "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}]  # fmt: skip
    events = [e for d in deltas for e in b.add(d)] + b.close()
    assert [(name, p.get("index")) for name, p in events] == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0),
        ("content_block_stop", 0), ("content_block_start", 1), ("content_block_delta", 1),
        ("content_block_stop", 1), ("content_block_start", 2), ("content_block_delta", 2),
        ("content_block_delta", 2), ("content_block_stop", 2)]  # fmt: skip
    assert events[0][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert events[5][1]["delta"] == {"type": "text_delta", "text": "Hi"}
    assert events[7][1]["content_block"] == {"type": "tool_use", "id": "toolu_abc", "name": "f", "input": {}}
    assert events[8][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"a": '}
    assert b.content() == [{"type": "thinking", "thinking": "thinking", "signature": ""},
                           {"type": "text", "text": "Hi"},
                           {"type": "tool_use", "id": "toolu_abc", "name": "f",
                            "input": {"a": 1}}]  # fmt: skip


def test_a_cut_off_tool_input_is_an_empty_object():
    assert anthropic_stream.tool_input('{"city": "Par') == {}
    assert anthropic_stream.tool_input("") == {} and anthropic_stream.tool_input("[1]") == {}


# -- whole requests against a scripted model -------------------------------------------
class FakeHandler:
    def __init__(self):
        self.json, self.events, self.streaming, self.close_connection = None, [], False, False

    def send_json(self, status, obj, close=False):
        self.json = (status, obj)

    def start_events(self):
        self.streaming = True

    def send_event(self, obj, event=None):
        assert self.streaming
        self.events.append((event, obj))

    def client_gone(self):
        return False


class FakeFormatter:
    template = None  # no template of its own: tools are described in the system prompt

    def render(self, messages, tools=None, extra=None):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return Prompt(text + "<assistant>", True, ["<end>"])


class FakeEngine:
    n_ctx = 4096


class FakeWorker:
    formatter, engine, n_slots = FakeFormatter(), FakeEngine(), 1


class FakeApp:
    """Answers every job with ``pieces``, then ``stats`` (or raises ``error`` after them)."""

    model_id, defaults = "smol", DEFAULTS

    def __init__(self, pieces, error=None, **stats):
        self.pieces, self.error, self.stats, self.jobs = pieces, error, stats, None

    def ready(self):
        return FakeWorker()

    def tokens(self, w, text, add_special, param):
        return list(text.encode())

    def run(self, h, jobs):
        self.jobs = jobs
        jobs[0].stats = Stats(prompt_tokens=len(jobs[0].tokens), cached_tokens=3, completion_tokens=5,
                              **self.stats)  # fmt: skip
        for piece in self.pieces:
            yield 0, ("piece", piece, [])
        if self.error:
            raise self.error
        yield 0, ("done", jobs[0].stats)


def call(route, app, **fields):
    h = FakeHandler()
    route(app, h, {"max_tokens": 8, "messages": USER, **fields})
    return h


def test_a_message_reply():
    app = FakeApp(["Hello", " there"], stop_word="END")
    status, msg = call(anthropic.messages, app, stop_sequences=["END"]).json
    assert status == 200 and msg["id"].startswith("msg_")
    prompt = len("<user>hi<assistant>")
    assert {k: v for k, v in msg.items() if k != "id"} == {
        "type": "message", "role": "assistant", "model": "smol",
        "content": [{"type": "text", "text": "Hello there"}], "stop_reason": "stop_sequence",
        "stop_sequence": "END", "usage": {"input_tokens": prompt - 3, "cache_creation_input_tokens": 0,
                                          "cache_read_input_tokens": 3, "output_tokens": 5},
    }  # fmt: skip
    job = app.jobs[0]
    assert (job.stop, job.max_tokens, job.stream) == (["<end>", "END"], 8, False)


def test_a_tool_call_reply():
    app = FakeApp(["Sure.", CALL])
    msg = call(anthropic.messages, app, tools=[TOOL], tool_choice={"type": "any"}).json[1]
    assert msg["stop_reason"] == "tool_use" and msg["content"][0] == {"type": "text", "text": "Sure."}
    use = msg["content"][1]
    assert use["type"] == "tool_use" and use["id"].startswith("toolu_")
    assert (use["name"], use["input"]) == ("get_weather", {"city": "Paris"})
    assert app.jobs[0].grammar  # the call is constrained to the tool's schema


def test_a_streamed_reply_is_anthropics_event_sequence():
    h = call(anthropic.messages, FakeApp(["Hel", "lo"], finish_reason="length"), stream=True)
    names = [name for name, _ in h.events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta",
                     "message_stop"]  # fmt: skip
    for name, payload in h.events:
        assert payload["type"] == name
    start = h.events[0][1]["message"]
    assert (start["content"], start["stop_reason"]) == ([], None)
    assert start["usage"]["cache_read_input_tokens"] == 3
    assert "".join(p["delta"]["text"] for n, p in h.events if n == "content_block_delta") == "Hello"
    end = h.events[-2][1]
    assert end["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert end["usage"]["output_tokens"] == 5


def test_a_streamed_tool_call():
    h = call(anthropic.messages, FakeApp([CALL[:30], CALL[30:]]), stream=True, tools=[TOOL],
             tool_choice={"type": "tool", "name": "get_weather"})  # fmt: skip
    start = next(p for n, p in h.events if n == "content_block_start")["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "get_weather" and start["input"] == {}
    text = "".join(p["delta"]["partial_json"] for n, p in h.events if n == "content_block_delta")
    assert json.loads(text) == {"city": "Paris"}
    assert h.events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_an_error_before_any_output_is_a_status_and_after_it_an_error_event():
    with pytest.raises(ApiError):  # httpd answers it with its status
        call(anthropic.messages, FakeApp([], error=ApiError(500, "boom", "server_error")), stream=True)
    h = call(anthropic.messages, FakeApp(["Hi"], error=ApiError(500, "boom", "server_error")), stream=True)
    assert h.events[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})


def test_count_tokens_counts_the_prompt_and_runs_nothing():
    app = FakeApp([])
    h = FakeHandler()
    anthropic.count_tokens(app, h, {"messages": USER, "system": "be brief"})
    assert h.json == (200, {"input_tokens": len("<system>be brief<user>hi<assistant>")})
    assert app.jobs is None
