"""Tool calls (runtime/llama/toolcalls.py, toolgrammar.py): each family's parser on
recorded model outputs, the streaming parser against the whole-output one, family
detection on the real chat templates from llama.cpp, and the grammars checked by
llama.cpp's own grammar engine (with the vocabulary of stories260K, loaded alone)."""

from __future__ import annotations

import ctypes
import itertools
import json
import math
import random
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MODEL, TOOLCHAIN
from runtime.llama import toolcalls as T
from runtime.llama.toolcalls import GENERIC, HERMES, LLAMA3, MISTRAL, StreamParser, ToolCall

SDIST = Path(TOOLCHAIN) / "sdist" / "llama_cpp_python-0.3.36.tar.gz"
TEMPLATES = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates/"


def fn(name, parameters=None, description=None):
    f = {"name": name}
    if description:
        f["description"] = description
    if parameters is not None:
        f["parameters"] = parameters
    return {"type": "function", "function": f}


WEATHER = fn("get_weather", {"type": "object", "properties": {
    "city": {"type": "string", "description": "City name"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer"}}, "required": ["city"]}, "Current weather in a city")  # fmt: skip
SEARCH = fn("search-docs", {
    "type": "object",
    "properties": {"query": {"$ref": "#/$defs/Query"}, "limit": {"type": "number"}},
    "required": ["query"],
    "$defs": {"Query": {"type": "object", "properties": {
        "text": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "filters": {"type": "object",
                    "properties": {"lang": {"type": "string"}, "exact": {"type": "boolean"}}},
    }, "required": ["text"]}},
})  # fmt: skip
# a second $defs/Query with another shape: the two tools' rules must not clash
OTHER_QUERY = fn("lookup", {"type": "object", "properties": {"q": {"$ref": "#/$defs/Query"}},
                            "required": ["q"],
                            "$defs": {"Query": {"type": "object", "properties": {"id": {"type": "integer"}},
                                                "required": ["id"]}}})  # fmt: skip
NO_ARGS = fn("now")
EVENTS = fn("add_event", {"type": "object", "properties": {
    "when": {"type": "string", "format": "date"},
    "who": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}},
                                       "required": ["name"]}, "minItems": 1},
    "kind": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    "meta": {"type": "object", "additionalProperties": {"type": "integer"}},
}, "required": ["when", "who"]})  # fmt: skip
TOOLS = [WEATHER, SEARCH, NO_ARGS]
ALL_TOOLS = [WEATHER, SEARCH, OTHER_QUERY, NO_ARGS, EVENTS]


def calls(*pairs):
    """Expected calls: (name, arguments text)."""
    return list(pairs)


PARIS = '{"city": "Paris", "unit": "celsius"}'
NESTED = '{"query": {"text": "say \\"hi\\" {not a brace}", "tags": ["a]", "b"], "filters": {"exact": true}}}'
UNICODE = '{"city": "Zürich", "note": "東京 ☀️ \\u00e9"}'

# (family, output as a model writes it, content, calls)
RECORDED = [
    # hermes (Qwen 2.5 / Hermes 2 Pro)
    (HERMES, f'<tool_call>\n{{"name": "get_weather", "arguments": {PARIS}}}\n</tool_call>', "",
     calls(("get_weather", PARIS))),
    (HERMES, f'<tool_call>\n{{"name": "get_weather", "arguments": {PARIS}}}\n</tool_call>\n<tool_call>\n'
             '{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>', "",
     calls(("get_weather", PARIS), ("get_weather", '{"city": "Rome"}'))),
    (HERMES, f'I\'ll look that up.\n\n<tool_call>\n{{"name": "get_weather", "arguments": {PARIS}}}\n'
             "</tool_call>", "I'll look that up.", calls(("get_weather", PARIS))),
    (HERMES, f'<tool_call>\n{{"name": "search-docs", "arguments": {NESTED}}}\n</tool_call>', "",
     calls(("search-docs", NESTED))),
    (HERMES, f'<tool_call>\n{{"name": "get_weather", "arguments": {UNICODE}}}\n</tool_call>', "",
     calls(("get_weather", UNICODE))),
    (HERMES, '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>\nThe time comes next.',
     "The time comes next.", calls(("now", "{}"))),
    (HERMES, '<think>\nThe user wants the weather.\n</think>\n\n<tool_call>\n'
             '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
     "<think>\nThe user wants the weather.\n</think>", calls(("get_weather", '{"city": "Oslo"}'))),
    # malformed: the name is not a JSON string; another shape; arguments not an object
    (HERMES, '<tool_call>\n{"name": get_weather, "arguments": {"city": "Paris"}}\n</tool_call>',
     '<tool_call>\n{"name": get_weather, "arguments": {"city": "Paris"}}\n</tool_call>', []),
    (HERMES, 'Calling.\n<tool_call>\n{"function": "get_weather", "args": {"city": "Paris"}}\n</tool_call>',
     'Calling.\n<tool_call>\n{"function": "get_weather", "args": {"city": "Paris"}}\n</tool_call>', []),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": "city=Paris"}\n</tool_call>',
     '<tool_call>\n{"name": "get_weather", "arguments": "city=Paris"}\n</tool_call>', []),
    (HERMES, "Wrap calls in a <tool_call> tag, or use <tools>.",
     "Wrap calls in a <tool_call> tag, or use <tools>.", []),
    # bad JSON inside the arguments of an announced call: kept as written (OpenAI's can be invalid too)
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris",}}\n</tool_call>', "",
     calls(("get_weather", '{"city": "Paris",}'))),
    # truncated: in the header (content), in the arguments (a cut-off call), in the closing tag
    (HERMES, 'Sure.\n<tool_call>\n{"name": "get_wea', 'Sure.\n<tool_call>\n{"name": "get_wea', []),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', "",
     calls(("get_weather", '{"city": "Pa'))),
    (HERMES, f'<tool_call>\n{{"name": "get_weather", "arguments": {PARIS}}}\n</tool_c', "",
     calls(("get_weather", PARIS))),
    (HERMES, "Plain answer with no calls.\n\nTwo paragraphs, a < b.\n", "Plain answer with no calls.\n\n"
     "Two paragraphs, a < b.\n", []),
    # llama3 (Llama 3.1/3.2/3.3)
    (LLAMA3, f'{{"name": "get_weather", "parameters": {PARIS}}}', "", calls(("get_weather", PARIS))),
    (LLAMA3, f'<|python_tag|>{{"name": "get_weather", "parameters": {PARIS}}}', "",
     calls(("get_weather", PARIS))),
    (LLAMA3, f'\n{{"name": "get_weather", "parameters": {PARIS}}}; '
             f'{{"name": "search-docs", "parameters": {NESTED}}}',
     "", calls(("get_weather", PARIS), ("search-docs", NESTED))),
    (LLAMA3, '{"type": "function", "name": "now", "parameters": {}}', "", calls(("now", "{}"))),
    (LLAMA3, f'{{"name": "get_weather", "arguments": {UNICODE}}}', "", calls(("get_weather", UNICODE))),
    (LLAMA3, f'Let me check.<|python_tag|>{{"name": "get_weather", "parameters": {PARIS}}}', "Let me check.",
     calls(("get_weather", PARIS))),
    (LLAMA3, '{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 36}', []),  # JSON, not a call
    (LLAMA3, 'Here it is: {"name": "get_weather", "parameters": {}}',  # only at the start, or after the tag
     'Here it is: {"name": "get_weather", "parameters": {}}', []),
    (LLAMA3, '{"name": "get_weather" "parameters": {"city": "Paris"}}',
     '{"name": "get_weather" "parameters": {"city": "Paris"}}', []),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Par', "",
     calls(("get_weather", '{"city": "Par'))),
    (LLAMA3, f'{{"name": "get_weather", "parameters": {PARIS}}}\n\nI called it.', "I called it.",
     calls(("get_weather", PARIS))),
    (LLAMA3, "The weather in Paris is mild.", "The weather in Paris is mild.", []),
    # mistral (Nemo / 7B v0.3)
    (MISTRAL, f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {PARIS}, "id": "a1B2c3D4e"}}]', "",
     calls(("get_weather", PARIS))),
    (MISTRAL, f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {PARIS}, "id": "a1B2c3D4e"}}, '
              f'{{"name": "search-docs", "arguments": {NESTED}, "id": "Zz9Yy8Xx7"}}]', "",
     calls(("get_weather", PARIS), ("search-docs", NESTED))),
    (MISTRAL, f'[{{"name": "get_weather", "arguments": {UNICODE}, "id": "a1B2c3D4e"}}]', "",  # no token
     calls(("get_weather", UNICODE))),
    (MISTRAL, '[TOOL_CALLS] [ {"name": "now", "arguments": {}} ]', "", calls(("now", "{}"))),
    (MISTRAL, f'Checking. [TOOL_CALLS][{{"name": "get_weather", "arguments": {PARIS}}}]', "Checking.",
     calls(("get_weather", PARIS))),
    (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": "Paris"}]',
     '[TOOL_CALLS][{"name": "get_weather", "arguments": "Paris"}]', []),
    (MISTRAL, "[1, 2, 3] are the first numbers.", "[1, 2, 3] are the first numbers.", []),
    (MISTRAL, f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {PARIS}, "id": "a1B2c3D4e"}}, '
              '{"name": "se',
     ', {"name": "se', calls(("get_weather", PARIS))),
    # generic (any other template): the hermes syntax, as the tool prompt describes it
    (GENERIC, '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>', "",
     calls(("get_weather", '{"city": "Paris"}'))),
    (GENERIC, 'One moment.\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>', "One moment.",
     calls(("now", "{}"))),
    (GENERIC, "Hello! How can I help you today?", "Hello! How can I help you today?", []),
]  # fmt: skip
IDS = [f"{i:02d}-{fmt.name}" for i, (fmt, *_rest) in enumerate(RECORDED)]


def counter():
    n = itertools.count()
    return lambda: f"id{next(n)}"


@pytest.mark.parametrize(("fmt", "text", "content", "expected"), RECORDED, ids=IDS)
def test_recorded_outputs_parse_into_content_and_calls(fmt, text, content, expected):
    got_content, got_calls = fmt.parse(text)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == expected
    for c in got_calls:
        if c.arguments.endswith("}") and c.arguments != '{"city": "Paris",}':
            json.loads(c.arguments)


def stream(fmt, pieces, new_id):
    parser = StreamParser(fmt, new_id=new_id)
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.finish()
    return events, parser.calls


def chunkings(text, seed, n=12):
    rng = random.Random(seed)
    yield list(text)  # one character at a time
    for _ in range(n):
        cuts = (
            sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
            if len(text) > 1
            else []
        )
        yield [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.parametrize(("fmt", "text", "content", "expected"), RECORDED, ids=IDS)
def test_streaming_in_any_chunking_agrees_with_parse(fmt, text, content, expected):
    want_content, want_calls = fmt.parse(text, new_id=counter())
    for pieces in chunkings(text, seed=len(text)):
        events, got_calls = stream(fmt, pieces, counter())
        assert "".join(e[1] for e in events if e[0] == "content") == want_content
        assert got_calls == want_calls
        announced = [e for e in events if e[0] == "call"]
        assert [(e[1], e[2], e[3]) for e in announced] == [
            (i, c.id, c.name) for i, c in enumerate(want_calls)
        ]
        for i, call in enumerate(got_calls):
            deltas = [e for e in events if e[0] == "arguments" and e[1] == i]
            assert "".join(e[2] for e in deltas) == call.arguments
            assert events.index(announced[i]) < events.index(deltas[0])  # the name comes first
        assert all(e[-1] for e in events if e[0] in ("content", "arguments"))  # no empty deltas


FRAGMENTS = ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "{", "}", "[", "]", '"name"',
             '"arguments"', '"id"', '"get_weather"', '"x\\"y"', ":", ",", ";", " ", "\n", "ab", "<tool", "é",
             "\\", '"', '{"name": "get_weather", "arguments": {', '{"name": "now", "parameters": {',
             ', "id": "a1B2c3D4e"}', '"city": "Paris"']  # fmt: skip


@settings(max_examples=150)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.lists(st.integers(1, 400), max_size=10))
def test_any_text_in_any_chunking_parses_the_same_streamed_or_whole(fragments, cuts):
    text = "".join(fragments)
    cuts = sorted({c for c in cuts if c < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    for fmt in (HERMES, LLAMA3, MISTRAL):
        content, calls = fmt.parse(text, new_id=counter())
        events, streamed = stream(fmt, pieces, counter())
        assert "".join(e[1] for e in events if e[0] == "content") == content and streamed == calls
        if not calls:
            assert content == text  # nothing lost


def test_content_is_held_back_only_while_it_could_start_a_call():
    p = StreamParser(HERMES)
    assert p.feed("Hello <tool") == [("content", "Hello")]  # " <tool" may start "<tool_call>"
    assert p.feed("s> are tags") == [("content", " <tools> are tags")]
    assert p.feed(".\n\n") == [("content", ".")]  # whitespace waits: a call may follow
    assert p.feed("More") == [("content", "\n\nMore")]
    assert p.finish() == []


def test_arguments_stream_as_they_arrive():
    p = StreamParser(HERMES, new_id=lambda: "call_1")
    assert p.feed('<tool_call>\n{"name": "get_weather", "argu') == []
    assert p.feed('ments": {"city": "Pa') == [
        ("call", 0, "call_1", "get_weather"),
        ("arguments", 0, '{"city": "Pa'),
    ]
    assert p.feed('ris"}') == [("arguments", 0, 'ris"}')]
    assert p.feed("}\n</tool_call>") == []
    assert p.finish() == [] and p.calls == [ToolCall("get_weather", '{"city": "Paris"}', "call_1")]


def test_llama3_and_mistral_hold_the_start_of_the_output_until_it_is_clear():
    p = StreamParser(LLAMA3)
    assert p.feed('{"name": "Ada"') == []
    assert p.feed(', "age": 3}') == [("content", '{"name": "Ada", "age": 3}')]
    p = StreamParser(MISTRAL)
    assert p.feed("[") == [] and p.feed("1, 2]") == [("content", "[1, 2]")]


def test_ids_look_like_openai_ids_and_mistral_ones_have_nine_characters():
    (_, [a]), (_, [b]) = HERMES.parse(RECORDED[0][1]), HERMES.parse(RECORDED[0][1])
    assert a.id.startswith("call_") and len(a.id) == 29 and a.id != b.id
    _, [m] = MISTRAL.parse('[TOOL_CALLS][{"name": "now", "arguments": {}, "id": "a1B2c3D4e"}]')
    assert len(m.id) == 9 and m.id.isalnum()
    assert a.openai() == {
        "id": a.id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": PARIS},
    }


# family detection on the real templates


@pytest.fixture(scope="module")
def templates() -> dict[str, str]:
    if not SDIST.exists():
        pytest.skip(f"the llama-cpp-python sdist is not in the toolchain cache ({SDIST})")
    found: dict[str, str] = {}
    with tarfile.open(SDIST, "r|gz") as tf:
        for member in tf:
            if member.name.startswith(TEMPLATES) and member.name.endswith(".jinja"):
                found[member.name[len(TEMPLATES) :]] = tf.extractfile(member).read().decode()
            elif found and not member.name.startswith(TEMPLATES):
                break  # the folder's files are together in the archive
    return found


FAMILIES = {
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "hermes",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "hermes",
    "Qwen-Qwen2.5-7B-Instruct": "hermes",
    "Qwen-QwQ-32B": "hermes",
    "Qwen-Qwen3-0.6B": "hermes",
    "ibm-granite-granite-4.0": "hermes",
    "meta-llama-Llama-3.1-8B-Instruct": "llama3",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3",
    "meta-llama-Llama-3.3-70B-Instruct": "llama3",
    "mistralai-Mistral-Nemo-Instruct-2407": "mistral",
    # other syntaxes: XML-style arguments, [ARGS], functionary, or no tools at all
    "Qwen3-Coder": "generic",
    "GLM-4.6": "generic",
    "Mistral-Small-3.2-24B-Instruct-2506": "generic",
    "unsloth-mistral-Devstral-Small-2507": "generic",
    "meetkai-functionary-medium-v3.1": "generic",
    "unsloth-Apriel-1.5": "generic",
    "google-gemma-2-2b-it": "generic",
    "microsoft-Phi-3.5-mini-instruct": "generic",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": "generic",
}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")  # fmt: skip


def test_the_family_is_picked_from_the_template(templates):
    got = {name: T.format_for(templates[name + ".jinja"]).name for name in FAMILIES}
    assert got == FAMILIES


def test_templates_without_tool_calling_are_generic():
    assert T.format_for(None) is GENERIC and T.format_for("") is GENERIC
    assert T.format_for("chatml") is GENERIC and T.format_for("llama3") is GENERIC  # format names
    assert T.format_for(CHATML) is GENERIC  # SmolLM2's ChatML
    assert not GENERIC.pass_tools_to_template and HERMES.pass_tools_to_template


def test_whether_a_template_renders_tools(templates):
    for name in ("Qwen-Qwen2.5-7B-Instruct", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
                 "meta-llama-Llama-3.1-8B-Instruct", "mistralai-Mistral-Nemo-Instruct-2407"):  # fmt: skip
        assert T.template_renders_tools(templates[name + ".jinja"]), name
    assert not T.template_renders_tools(templates["google-gemma-2-2b-it.jinja"])
    assert not T.template_renders_tools(CHATML) and not T.template_renders_tools(None)
    assert not T.template_renders_tools("{% if %}")  # a syntax error renders nothing


def render(source, messages, tools):
    from runtime.llama.templates import compile_template

    return compile_template(source).render(messages=messages, tools=tools, bos_token="<s>", eos_token="</s>",
                                           add_generation_prompt=True)  # fmt: skip


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_Xy12", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_Xy12", "content": "18 C, sunny"},
]  # fmt: skip


@pytest.mark.parametrize(("template", "written"), [
    ("Qwen-Qwen2.5-7B-Instruct",
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    ("meta-llama-Llama-3.1-8B-Instruct", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    ("mistralai-Mistral-Nemo-Instruct-2407",
     '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "'),
])  # fmt: skip
def test_past_calls_render_in_the_syntax_the_parser_reads(templates, template, written):
    source = templates[template + ".jinja"]
    fmt = T.format_for(source)
    messages = T.prepare_messages(fmt, HISTORY, [WEATHER], template_renders_tools=True)
    text = render(source, messages, [WEATHER])
    assert written in text and "18 C, sunny" in text and "Current weather in a city" in text
    call = written + (text.split(written, 1)[1][:11] if fmt is MISTRAL else "")
    call += {"hermes": "", "llama3": "", "mistral": "]"}[fmt.name]
    assert [(c.name, c.arguments) for c in fmt.parse(call)[1]] == [("get_weather", '{"city": "Paris"}')]
    if fmt is MISTRAL:  # its template insists on 9-character ids, the same for call and result
        assert (
            '"call_id": "' + messages[2]["tool_call_id"] + '"' in text
            and len(messages[2]["tool_call_id"]) == 9
        )


def test_parallel_past_calls_render_one_a_message_for_llama3(templates):
    source = templates["meta-llama-Llama-3.1-8B-Instruct.jinja"]
    rome = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
    }
    history = [HISTORY[0], {**HISTORY[1], "tool_calls": [*HISTORY[1]["tool_calls"], rome]}, HISTORY[2],
               {"role": "tool", "tool_call_id": "call_2", "content": "21 C"}]  # fmt: skip
    messages = T.prepare_messages(LLAMA3, history, [WEATHER], template_renders_tools=True)
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant", "tool", "tool"]
    text = render(source, messages, [WEATHER])  # the template refuses two calls in one message
    assert '{"name": "get_weather", "parameters": {"city": "Rome"}}' in text and "21 C" in text
    assert history[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # not changed


def test_generic_history_becomes_text_and_the_tools_a_system_prompt():
    messages = T.prepare_messages(GENERIC, [{"role": "system", "content": "Be brief."}, *HISTORY,
                                            {"role": "tool", "tool_call_id": "x", "content": "more"}],
                                  [WEATHER], template_renders_tools=False)  # fmt: skip
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert (
        messages[0]["content"].startswith("Be brief.\n\n# Tools")
        and '"get_weather"' in messages[0]["content"]
    )
    assert "<tool_call>" in messages[0]["content"]
    assert (
        messages[2]["content"]
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert (
        messages[3]["content"]
        == "<tool_response>\n18 C, sunny\n</tool_response>\n<tool_response>\nmore\n</tool_response>"
    )
    assert GENERIC.parse(messages[2]["content"])[1][0].arguments == '{"city": "Paris"}'
    text = render(CHATML, messages, None)
    assert "<|im_start|>system\nBe brief.\n\n# Tools" in text
    assert (
        T.prepare_messages(GENERIC, HISTORY[:1], [WEATHER], template_renders_tools=False)[0]["role"]
        == "system"
    )


def test_prompt_tools_only_where_the_template_does_not_do_it():
    assert HERMES.prompt_tools(True, TOOLS) is None and LLAMA3.prompt_tools(True, TOOLS) is None
    assert MISTRAL.prompt_tools(True, TOOLS) is None
    assert '"search-docs"' in GENERIC.prompt_tools(True, TOOLS)  # generic templates never see the tools
    assert '"parameters": dictionary' in LLAMA3.prompt_tools(False, TOOLS)
    assert "[TOOL_CALLS]" in MISTRAL.prompt_tools(False, TOOLS)
    assert "<tool_call>" in HERMES.prompt_tools(False, TOOLS)


# validation


@pytest.mark.parametrize(("tools", "message"), [
    ({"type": "function"}, "tools must be a list"),
    (["get_weather"], "tools[0] must be an object"),
    ([WEATHER, {"function": {"name": "x"}}], "tools[1].type is missing"),
    ([{"type": "code_interpreter"}], 'tools[0].type must be "function"'),
    ([WEATHER, {"type": "function"}], "tools[1].function is missing"),
    ([WEATHER, {"type": "function", "function": {"description": "no name"}}],
     "tools[1].function.name is missing"),
    ([fn("get weather")], "tools[0].function.name must be 1 to 64 letters, digits, underscores or dashes"),
    ([fn("x" * 65)], "tools[0].function.name must be 1 to 64"),
    ([WEATHER, SEARCH, fn("get_weather")],
     "tools[2].function.name 'get_weather' is also the name of tools[0]"),
    ([{"type": "function", "function": {"name": "a", "description": 3}}],
     "tools[0].function.description must be"),
    ([fn("a", ["city"])], "tools[0].function.parameters must be a JSON schema"),
    ([fn("a", {"type": "string"})], 'tools[0].function.parameters must be a JSON schema of "type": "object"'),
])  # fmt: skip
def test_bad_tools_are_refused_with_the_field_named(tools, message):
    with pytest.raises(ValueError) as e:
        T.tool_choice_grammar(HERMES, tools, "auto", True)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "object", "properties": {"x": {"type": "frobnicate"}}},
     "tools[1].function.parameters (tool 'bad')"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/Missing"}}},
     "tools[1].function.parameters (tool 'bad')"),
    ({"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}, "(tool 'bad')"),
])  # fmt: skip
def test_a_schema_the_converter_cannot_handle_names_the_tool(schema, message):
    for fmt in (HERMES, LLAMA3, MISTRAL):
        with pytest.raises(ValueError, match=r"cannot be turned into a grammar") as e:
            T.tool_choice_grammar(fmt, [WEATHER, fn("bad", schema)], "required", False)
        assert message in str(e.value)


def test_tool_choice():
    assert T.tool_choice_grammar(HERMES, TOOLS, "none", True) == (None, False)
    assert T.tool_choice_grammar(HERMES, None, None, True) == (None, False)  # no tools: plain chat
    grammar, lazy = T.tool_choice_grammar(HERMES, TOOLS, None, True)
    assert lazy and "root ::=" in grammar and '"<tool_call>"' in grammar
    grammar, lazy = T.tool_choice_grammar(HERMES, TOOLS, "required", False)
    assert not lazy and "search-docs-call" in grammar
    grammar, lazy = T.tool_choice_grammar(
        HERMES, TOOLS, {"type": "function", "function": {"name": "now"}}, True
    )
    assert (
        not lazy and "now-call" in grammar and "get-weather" not in grammar and "search-docs" not in grammar
    )
    with pytest.raises(ValueError, match=r"tool_choice.function.name 'nope' is not one of the tools"):
        T.tool_choice_grammar(HERMES, TOOLS, {"type": "function", "function": {"name": "nope"}}, True)
    for bad in ("sometimes", {"type": "function"}, {"function": {"name": "now"}}, 3):
        with pytest.raises(ValueError, match=r"^tool_choice must be"):
            T.tool_choice_grammar(HERMES, TOOLS, bad, True)
    with pytest.raises(ValueError, match=r'"required" needs tools'):
        T.tool_choice_grammar(HERMES, [], "required", True)


def test_the_tools_are_not_changed():
    tools = json.loads(json.dumps(ALL_TOOLS))
    for fmt in (HERMES, LLAMA3, MISTRAL):
        fmt.grammar(tools, parallel=True)
    assert tools == ALL_TOOLS  # the converter rewrites $refs in place: it works on a copy


# the grammars, checked by llama.cpp's grammar engine


class Grammars:
    """llama.cpp grammar samplers over the vocabulary of stories260K: its 256 byte
    tokens spell any text, one byte at a time."""

    def __init__(self):
        from runtime.llama.backend import bindings, init

        self.C = C = bindings()
        init()
        params = C.llama_model_default_params()
        params.vocab_only = True
        self.model = C.llama_model_load_from_file(str(MODEL).encode(), params)
        assert self.model, f"cannot load the vocabulary of {MODEL}"
        self.vocab = C.llama_model_get_vocab(self.model)
        self.eos = C.llama_vocab_eos(self.vocab)
        self.byte_token: dict[int, int] = {}
        buf = ctypes.create_string_buffer(32)
        for token in range(C.llama_vocab_n_tokens(self.vocab)):
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
            if n == 1:
                self.byte_token.setdefault(buf.raw[0], token)
        assert len(self.byte_token) == 256

    def sampler(self, grammar: str, patterns: list[str] | None = None):
        C = self.C
        if patterns is None:
            return C.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        arr = (ctypes.c_char_p * len(patterns))(*(p.encode() for p in patterns))
        return C.llama_sampler_init_grammar_lazy_patterns(self.vocab, grammar.encode(), b"root", arr,
                                                          len(patterns), None, 0)  # fmt: skip

    def _allowed(self, smpl, token: int) -> bool:
        C = self.C
        data = (C.llama_token_data * 1)(C.llama_token_data(token, 0.0, 0.0))
        arr = C.llama_token_data_array(data, 1, -1, False)
        C.llama_sampler_apply(smpl, ctypes.byref(arr))
        return data[0].logit != -math.inf

    def accepts(self, grammar: str, text: str, patterns: list[str] | None = None) -> bool:
        """Whether the grammar lets a model write exactly ``text`` and then stop."""
        smpl = self.sampler(grammar, patterns)
        assert smpl, "llama.cpp refused the grammar"
        try:
            for byte in text.encode():
                token = self.byte_token[byte]
                if not self._allowed(smpl, token):
                    return False
                self.C.llama_sampler_accept(smpl, token)
            return self._allowed(smpl, self.eos)
        finally:
            self.C.llama_sampler_free(smpl)

    def close(self):
        self.C.llama_model_free(self.model)


@pytest.fixture(scope="module")
def gbnf():
    g = Grammars()
    yield g
    g.close()


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3, MISTRAL, GENERIC], ids=lambda f: f.name)
def test_every_grammar_is_accepted_by_llama_cpp(gbnf, fmt):
    for tools, parallel in itertools.product(
        [TOOLS, ALL_TOOLS, [NO_ARGS], [EVENTS, OTHER_QUERY]], [False, True]
    ):
        grammar = fmt.grammar(tools, parallel=parallel)
        smpl = gbnf.sampler(grammar)
        assert smpl, grammar
        gbnf.C.llama_sampler_free(smpl)
        lazy = gbnf.sampler(grammar, fmt.trigger_patterns())
        assert lazy, fmt.trigger_patterns()
        gbnf.C.llama_sampler_free(lazy)


def test_a_broken_grammar_is_refused(gbnf):
    assert not gbnf.sampler('root ::= "a" [0-9')
    assert not gbnf.sampler('root ::= undefined-rule "a"')


WEATHER_ARGS = '{"city": "Zürich", "unit": "celsius"}'
# (family, a call it writes, not parallel); each also written twice, as parallel calls
GOOD = [
    (HERMES, f'<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER_ARGS}}}\n</tool_call>'),
    (HERMES, '<tool_call>{"name": "search-docs", "arguments": {"query": {"text": "x", "tags": ["a"]}, '
             '"limit": 2.5}}</tool_call>'),
    (HERMES, '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'),
    (LLAMA3, f'{{"name": "get_weather", "parameters": {WEATHER_ARGS}}}'),
    (LLAMA3, '<|python_tag|>{"name": "now", "parameters": {}}'),
    (MISTRAL, f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {WEATHER_ARGS}, "id": "a1B2c3D4e"}}]'),
    (MISTRAL, '[{"name": "now", "arguments": {}, "id": "123456789"}]'),
    (GENERIC, '<tool_call>\n{"name": "search-docs", "arguments": '
              '{"query": {"text": "é", "filters": {"exact": false}}}}\n</tool_call>'),
]  # fmt: skip


def hermes(arguments, name="get_weather"):
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


BAD = [
    (HERMES, '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'),  # unknown tool
    (HERMES, hermes('{"unit": "celsius"}')),  # no city
    (HERMES, hermes('{"city": "Oslo", "unit": "kelvin"}')),
    (HERMES, hermes('{"city": 3}')),
    (HERMES, hermes('{"query": {"text": "x", "tags": ["a", "b", "c", "d"]}}', "search-docs")),  # 3 at most
    (HERMES, "Sure! " + hermes("{}", "now")),  # text first: not when required
    (HERMES, '<tool_call>\n{"name": "now", "arguments": {}}\n'),  # unfinished
    (LLAMA3, '{"name": "get_weather", "arguments": {"city": "Oslo"}}'),  # llama3 writes "parameters"
    (MISTRAL, '[TOOL_CALLS][{"name": "now", "arguments": {}, "id": "12345678"}]'),  # the id has 9 characters
    (MISTRAL, '[TOOL_CALLS][{"name": "now", "arguments": {}}]'),
]  # fmt: skip


def parallel_of(fmt, call):
    if fmt is LLAMA3:
        return call + "; " + call.removeprefix("<|python_tag|>")
    if fmt is MISTRAL:
        inner = call[call.index("{") : call.rindex("}") + 1]
        return call.replace(inner, inner + ", " + inner)
    return call + "\n" + call


@pytest.mark.parametrize(("fmt", "text"), GOOD, ids=[f.name for f, _ in GOOD])
def test_the_grammar_accepts_a_valid_call_and_the_parser_reads_it(gbnf, fmt, text):
    grammar = fmt.grammar(ALL_TOOLS, parallel=False)
    assert gbnf.accepts(grammar, text)
    assert not gbnf.accepts(grammar, parallel_of(fmt, text))  # one call only
    assert gbnf.accepts(fmt.grammar(ALL_TOOLS, parallel=True), parallel_of(fmt, text))
    content, got = fmt.parse(parallel_of(fmt, text))
    assert content == "" and len(got) == 2 and got[0].name == got[1].name
    assert all(isinstance(json.loads(c.arguments), dict) for c in got)


@pytest.mark.parametrize(("fmt", "text"), BAD, ids=[f.name for f, _ in BAD])
def test_the_grammar_rejects_an_invalid_call(gbnf, fmt, text):
    assert not gbnf.accepts(fmt.grammar(ALL_TOOLS, parallel=True), text)


def test_a_named_tool_choice_allows_only_that_tool(gbnf):
    grammar, lazy = T.tool_choice_grammar(
        HERMES, ALL_TOOLS, {"type": "function", "function": {"name": "now"}}, False
    )
    assert gbnf.accepts(grammar, GOOD[2][1])
    assert not gbnf.accepts(grammar, GOOD[0][1])


def test_a_lazy_grammar_lets_text_through_until_a_call_starts(gbnf):
    grammar, lazy = T.tool_choice_grammar(HERMES, ALL_TOOLS, "auto", True)
    patterns = HERMES.trigger_patterns()
    assert lazy
    assert gbnf.accepts(grammar, "Just text, no call: {not json} <tool>.", patterns)
    assert gbnf.accepts(grammar, "Let me check.\n" + GOOD[0][1], patterns)
    assert not gbnf.accepts(grammar, "Let me check.\n" + BAD[0][1], patterns)
    grammar, _ = T.tool_choice_grammar(LLAMA3, ALL_TOOLS, "auto", True)
    patterns = LLAMA3.trigger_patterns()
    assert gbnf.accepts(grammar, "\n" + GOOD[3][1], patterns)  # at the start, without <|python_tag|>
    assert not gbnf.accepts(grammar, ' {"name": "get_time", "parameters": {}}', patterns)
    assert gbnf.accepts(grammar, 'Text: {"name": "get_time", "parameters": {}}', patterns)  # not at the start
    assert not gbnf.accepts(grammar, 'Text: <|python_tag|>{"name": "get_time", "parameters": {}}', patterns)
    grammar, _ = T.tool_choice_grammar(MISTRAL, ALL_TOOLS, "auto", True)
    patterns = MISTRAL.trigger_patterns()
    assert gbnf.accepts(grammar, "Checking. " + GOOD[5][1], patterns)
    assert gbnf.accepts(grammar, GOOD[6][1], patterns)
    assert not gbnf.accepts(grammar, '[{"name": "now", "arguments": {}}]', patterns)  # id missing


def test_rule_names_stay_apart_per_tool():
    grammar = HERMES.grammar(ALL_TOOLS, parallel=True)
    rules = [line.split(" ::= ")[0] for line in grammar.splitlines() if line]
    assert len(rules) == len(set(rules)) and rules.count("root") == 1
    assert "search-docs-ref-defs-Query" in rules and "lookup-ref-defs-Query" in rules
