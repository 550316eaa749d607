"""A reply turned into OpenAI's reasoning_content / content (runtime/server/reply.py), and
the new request fields' checks (runtime/server/api.py, chat_api.py), without a model."""

from __future__ import annotations

import random

import pytest

from runtime.llama.job import Sampling
from runtime.server.api import ApiError, completion_request
from runtime.server.chat_api import chat_request
from runtime.server.reply import Reply, ThinkSplitter, open_marker

DEFAULTS = Sampling()
USER = [{"role": "user", "content": "hi"}]


def split(text: str, pieces: list[str], open_close=None) -> tuple[str, str]:
    s = ThinkSplitter(open_close)
    out = [p for piece in pieces for p in s.feed(piece)] + s.finish()
    return "".join(t for k, t in out if k == "reasoning"), "".join(t for k, t in out if k == "content")


@pytest.mark.parametrize(
    "text, reasoning, content",
    [
        ("<think>Let me see.</think>\n\nIt is 4.", "Let me see.", "It is 4."),
        ("  <think>a</think>b", "a", "b"),
        ("<|START_THINKING|>x<|END_THINKING|>y", "x", "y"),
        ("[THINK]x[/THINK]y", "x", "y"),
        (
            "No thinking here <think>not at the start</think>",
            "",
            "No thinking here <think>not at the start</think>",
        ),
        ("<think>never closed", "never closed", ""),
        ("<thi", "", "<thi"),  # a marker that never completes is text
        ("", "", ""),
    ],
)
def test_thinking_is_split_off_the_start_of_a_reply_however_it_streams(text, reasoning, content):
    rng = random.Random(text)
    for _ in range(30):
        cuts = (
            sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 6))))
            if len(text) > 1
            else []
        )
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert split(text, pieces) == (reasoning, content), pieces


def test_a_prompt_that_opens_the_thinking_starts_the_reply_inside_it():
    assert open_marker("<|im_start|>assistant\n<think>\n") == "</think>"
    assert open_marker("<|im_start|>assistant\n") is None
    assert split("", ["I should add.", "</think>", "4"], open_close="</think>") == ("I should add.", "4")


def test_a_reply_gives_deltas_and_the_final_message():
    r = Reply(split_reasoning=True)
    deltas = r.feed("<think>hm") + r.feed("</think>Hi") + r.finish()
    assert deltas == [{"reasoning_content": "hm"}, {"content": "Hi"}]
    assert r.message() == {"role": "assistant", "content": "Hi", "reasoning_content": "hm"}


def test_reasoning_format_none_keeps_the_thinking_inline():
    r = Reply(split_reasoning=False)
    r.feed("<think>hm</think>Hi")
    assert r.message() == {"role": "assistant", "content": "<think>hm</think>Hi"}


# -- request fields ------------------------------------------------------------------
def chat(**fields):
    return chat_request({"messages": USER, **fields}, DEFAULTS, -1)


def test_response_format_and_llama_server_fields_become_a_grammar():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    r = chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert r.json_schema == schema and "root ::=" in r.grammar
    assert "root ::=" in chat(response_format={"type": "json_object"}).grammar
    assert chat(response_format={"type": "text"}).grammar is None
    assert chat(grammar='root ::= "a"').grammar == 'root ::= "a"'
    assert "root ::=" in completion_request({"prompt": "x", "json_schema": schema}, DEFAULTS, 5).grammar


def test_tools_tool_choice_logprobs_and_bias_are_carried():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    r = chat(tools=[tool], tool_choice={"type": "function", "function": {"name": "get_weather"}},
             parallel_tool_calls=False, logprobs=True, top_logprobs=3, logit_bias={"42": -100, "7": 2.5},
             reasoning_format="none", chat_template_kwargs={"enable_thinking": False})  # fmt: skip
    assert r.tools == [tool] and r.tool_choice["function"]["name"] == "get_weather"
    assert (r.parallel_tool_calls, r.logprobs, r.reasoning_format) == (False, 3, "none")
    assert r.logit_bias == {42: float("-inf"), 7: 2.5} and r.template_kwargs == {"enable_thinking": False}
    assert chat(tools=[tool], tool_choice="none").tools == []  # "none": the model never sees them
    assert chat(logprobs=True).logprobs == 0


@pytest.mark.parametrize(
    "fields, param, needle",
    [
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools", "tools[0] must be"),
        ({"tools": "x"}, "tools", "'tools' must be a list"),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice", "not among 'tools'"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "json_schema": {"type": "object"}},
         "tools", "do not go together"),
        ({"functions": []}, "functions", "not supported"),
        ({"reasoning_format": "xml"}, "reasoning_format", "must be one of"),
        ({"logit_bias": {"1": 101}}, "logit_bias", "from -100 to 100"),
        ({"messages": [{"role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages", "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_new_fields_are_400s_naming_them(fields, param, needle):
    with pytest.raises(ApiError) as info:
        chat(**fields)
    assert info.value.status == 400 and info.value.param == param and needle in info.value.message


@pytest.mark.parametrize(
    "hint", ["user", "metadata", "store", "service_tier", "reasoning_effort", "cache_prompt"]
)
def test_hints_are_accepted(hint):
    chat(**{hint: "x"})
