"""Tool calls (OpenAI ``tools``): the call syntax of each model family, the grammar
that makes a model call a tool correctly, and parsing calls out of its output.

A model is trained to call tools in its own syntax, which its chat template shows it
(the template renders ``tools`` into the prompt and past calls into the history):

- ``hermes`` (Hermes 2 Pro/3, Qwen 2.5/3, Granite 4): ``<tool_call>\\n{"name": ...,
  "arguments": {...}}\\n</tool_call>``, one block per call;
- ``llama3`` (Llama 3.1/3.2/3.3): ``{"name": ..., "parameters": {...}}`` as the whole
  reply, optionally after ``<|python_tag|>``; several joined by ``;``;
- ``mistral`` (Mistral 7B v0.3, Nemo): ``[TOOL_CALLS][{"name": ..., "arguments": {...},
  "id": "<9 letters or digits>"}, ...]``;
- ``generic``, for any other template (or none): the tools and the hermes syntax are
  described in a system message (``prompt_tools``) and the template never sees ``tools``.

These follow llama-server's formats. The grammar (``tool_choice_grammar``) is lazy for
``tool_choice="auto"``: llama.cpp applies it once a trigger (``ToolFormat.trigger_patterns``)
appears, so the model may answer in text or call tools; "required" and a named function
apply it from the first token.

``StreamParser`` splits output into content and calls as it streams; ``ToolFormat.parse``
is the same parser run over a whole output, so the two always agree. A call becomes a
call once its name and the ``{`` of its arguments are seen: text that breaks off or goes
wrong before that (bad JSON, another shape, a cut-off header) is content. After that
the call stands, and its arguments are the text of the JSON object as the model wrote
it: complete and valid with a grammar, possibly cut off when the output hit its length
limit (as OpenAI's own can be). Whitespace between content and a call is dropped.
"""

from __future__ import annotations

import functools
import secrets

from . import toolgrammar
from .toolgrammar import tool_choice_grammar, validate_tools
from .toolhistory import _tool_lines, prepare_messages
from .toolparse import ALNUM, HEAD, TYPE_FUNCTION, StreamParser, ToolCall, _key

__all__ = ["ToolCall", "ToolFormat", "StreamParser", "HERMES", "LLAMA3", "MISTRAL", "GENERIC", "FORMATS",
           "format_for", "template_renders_tools", "prepare_messages", "tool_choice_grammar",
           "validate_tools"]  # fmt: skip


class ToolFormat:
    """One family's call syntax. The parser steps: a section opens with a trigger word
    (or, where ``bare_start``, at the start of the output without one) and ``open``;
    each call is ``head``, the arguments object, ``tail``; ``next`` leads from one call
    to the next within a section (None: one call a section), ``close`` ends it."""

    name = "generic"
    triggers = ["<tool_call>"]
    bare_start = False  # a section may open without its trigger word at the start of the output
    start_regex = ""  # ... the ECMAScript regex that tells it (for the lazy grammar)
    pass_tools_to_template = False  # whether to give the template ``tools`` (and past calls as such)
    open: list = []
    head = HEAD
    tail = [" ", "}"]
    next: list | None = None
    close = [" ", "</tool_call>"]

    def __repr__(self) -> str:
        return f"<ToolFormat {self.name}>"

    def new_id(self) -> str:
        return "call_" + "".join(secrets.choice(ALNUM) for _ in range(24))

    def prompt_tools(self, template_renders_tools: bool, tools: list[dict]) -> str | None:
        """System-prompt text describing the tools and the call syntax, for templates that
        do not render ``tools`` themselves; None when the template does it."""
        if template_renders_tools and self.pass_tools_to_template:
            return None
        return (
            "# Tools\n\nYou may call one or more functions to help with the user's request. "
            "The functions, with JSON schemas of their arguments:\n<tools>\n"
            + _tool_lines(tools)
            + "\n</tools>\n\n"
            "To call a function, reply with a JSON object holding its name and arguments "
            "between <tool_call></tool_call> tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <arguments-json-object>}\n</tool_call>\n'
            "Use one such block for each call. The results come back in <tool_response></tool_response> "
            "tags. When no function is needed, answer in plain text."
        )

    def grammar(self, tools: list[dict], *, parallel: bool, only: str | None = None) -> str:
        """GBNF for a call section (several calls when ``parallel``), starting with the
        trigger; ``only`` restricts it to the tool of that name. ValueError names a tool
        whose schema the converter cannot handle."""
        picked = [(i, t) for i, t in enumerate(tools) if only is None or t["function"]["name"] == only]
        return self._grammar([t for _, t in picked], [i for i, _ in picked], parallel)

    def _grammar(self, tools, indexes, parallel) -> str:
        ws = toolgrammar.WS
        between = f'{ws} "</tool_call>" {ws} "<tool_call>" {ws}'
        return toolgrammar.build(tools, indexes, name_key="arguments", open_=f'"<tool_call>" {ws}',
                                 separator=between if parallel else None,
                                 close=f'{ws} "</tool_call>"')  # fmt: skip

    def trigger_patterns(self) -> list[str]:
        """Patterns for ``llama_sampler_init_grammar_lazy_patterns``: the lazy grammar is
        fed from where a call section starts."""
        words = [toolgrammar.word_pattern(self.triggers)] if self.triggers else []
        return words + ([toolgrammar.start_pattern(self.start_regex)] if self.bare_start else [])

    def parse(self, text: str, *, new_id=None) -> tuple[str, list[ToolCall]]:
        """A whole output split into content (text outside calls) and calls."""
        parser = StreamParser(self, new_id=new_id)
        events = parser.feed(text) + parser.finish()
        return "".join(e[1] for e in events if e[0] == "content"), parser.calls


class Hermes(ToolFormat):
    name = "hermes"
    pass_tools_to_template = True


class Llama3(ToolFormat):
    name = "llama3"
    triggers = ["<|python_tag|>"]
    bare_start, start_regex = True, '\\{\\s*"name"'
    pass_tools_to_template = True
    head = [" ", "{", " ", TYPE_FUNCTION, *HEAD[3:]]
    next = [" ", ";"]
    close: list = []

    def prompt_tools(self, template_renders_tools, tools):
        if template_renders_tools:
            return None
        return ("You have access to the following functions. To call a function, respond with JSON for a "
                'function call, in the format {"name": function name, "parameters": dictionary of argument '
                "name and its value}. Do not use variables.\n\n"
                + _tool_lines(tools, indent=4, sep="\n\n"))  # fmt: skip

    def _grammar(self, tools, indexes, parallel):
        return toolgrammar.build(tools, indexes, name_key="parameters", open_='"<|python_tag|>"?',
                                 separator='";" space' if parallel else None, close="")  # fmt: skip


class Mistral(ToolFormat):
    name = "mistral"
    triggers = ["[TOOL_CALLS]"]
    bare_start, start_regex = True, '\\[\\s*\\{\\s*"name"'  # [TOOL_CALLS] is a control token
    pass_tools_to_template = True
    open = [" ", "["]
    tail = [" ", ("opt", [",", " ", *_key("id"), ("str", None, None)]), " ", "}"]
    next = [" ", ","]
    close = [" ", "]"]

    def new_id(self) -> str:
        return "".join(secrets.choice(ALNUM) for _ in range(9))  # the templates insist on 9

    def prompt_tools(self, template_renders_tools, tools):
        if template_renders_tools:
            return None
        return ("You can call these functions, given with JSON schemas of their arguments:\n"
                + _tool_lines(tools) + "\n\nTo call functions, reply with [TOOL_CALLS] and a JSON list of "
                '[{"name": <function-name>, "arguments": <arguments-json-object>, '
                '"id": <9 letters or digits>}]. '
                "When no function is needed, answer in plain text.")  # fmt: skip

    def _grammar(self, tools, indexes, parallel):
        return toolgrammar.build(tools, indexes, name_key="arguments",
                                 open_='"[TOOL_CALLS]"? space "[" space',
                                 separator='"," space' if parallel else None, close='"]" space',
                                 with_id=True)  # fmt: skip


HERMES, LLAMA3, MISTRAL, GENERIC = Hermes(), Llama3(), Mistral(), ToolFormat()
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, GENERIC)}
# templates with <tool_call> (or <|python_tag|>) whose calls are not JSON in it: XML-style
# arguments (Qwen3-Coder, Qwen 3.5, GLM 4.x, MiniMax, Functionary), or a list (Apriel)
OTHER_SYNTAX = ("<function=", "<parameter=", "<arg_key>", "<invoke", "<tool_calls>")


def format_for(template_source: str | None) -> ToolFormat:
    """The family a chat template's model calls tools in (generic when in doubt)."""
    src = template_source or ""
    if "{" not in src:  # no template, or a format name llama.cpp renders without tools
        return GENERIC
    if "[TOOL_CALLS]" in src and "[ARGS]" not in src:  # [ARGS]: Mistral Small 3.2, Devstral
        return MISTRAL
    if any(marker in src for marker in OTHER_SYNTAX):
        return GENERIC
    if "<tool_call>" in src:
        return HERMES
    if "<|python_tag|>" in src or ("ipython" in src and '"parameters"' in src):
        return LLAMA3
    return GENERIC


@functools.lru_cache(maxsize=8)
def template_renders_tools(template_source: str | None) -> bool:
    """Whether a Jinja chat template puts ``tools`` into the prompt: it is rendered with
    one probe tool, as llama.cpp probes a template's capabilities. A bundle has one
    template, so the probe runs once, not on every request with tools."""
    if not template_source or "{" not in template_source:
        return False
    from .templates import compile_template

    probe = "llamabundle_probe_tool"
    tool = {"type": "function", "function": {"name": probe, "description": "A probe.",
                                             "parameters": {"type": "object", "properties": {}}}}  # fmt: skip
    try:
        text = compile_template(template_source).render(
            messages=[{"role": "user", "content": "Hi"}], tools=[tool], bos_token="", eos_token="",
            add_generation_prompt=True)  # fmt: skip
    except Exception:  # a template that refuses the probe does not render tools usably
        return False
    return probe in text
