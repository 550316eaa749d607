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

import hashlib
import json
import secrets
import string
from dataclasses import dataclass

from . import toolgrammar
from .toolgrammar import tool_choice_grammar, validate_tools

__all__ = ["ToolCall", "ToolFormat", "StreamParser", "HERMES", "LLAMA3", "MISTRAL", "GENERIC", "FORMATS",
           "format_for", "template_renders_tools", "prepare_messages", "tool_choice_grammar",
           "validate_tools"]  # fmt: skip
ALNUM = string.ascii_letters + string.digits
WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text (an object), as OpenAI returns it
    id: str

    def openai(self) -> dict:
        """As an OpenAI ``tool_calls`` item."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


# A call's syntax is matched with steps: " " is whitespace (any amount; never a last
# step), any other str a literal, ("str", capture, allowed) a JSON string (its value
# one of ``allowed`` unless that is None; stored under ``capture`` unless that is None),
# ("opt", steps) an optional group, ("peek", c) the next character, not consumed.
NEED, FAIL = -1, -2


def _string_end(text: str, pos: int) -> int:
    if pos == len(text):
        return NEED
    if text[pos] != '"':
        return FAIL
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        elif c < " ":
            return FAIL
        else:
            i += 1
    return NEED


def _match(steps: list, text: str, pos: int, got: dict) -> int:
    """Match ``steps`` at ``pos``: the end position, NEED (the text ends first) or FAIL."""
    for step in steps:
        if step == " ":
            while pos < len(text) and text[pos] in WHITESPACE:
                pos += 1
            if pos == len(text):
                return NEED
        elif isinstance(step, str):
            chunk = text[pos : pos + len(step)]
            if not step.startswith(chunk):
                return FAIL
            if len(chunk) < len(step):
                return NEED
            pos += len(step)
        elif step[0] == "peek":
            if pos == len(text):
                return NEED
            if text[pos] != step[1]:
                return FAIL
        elif step[0] == "str":
            end = _string_end(text, pos)
            if end < 0:
                return end
            try:
                value = json.loads(text[pos:end])
            except ValueError:
                return FAIL
            if (step[2] is not None and value not in step[2]) or not value.strip():
                return FAIL
            if step[1]:
                got[step[1]] = value
            pos = end
        else:  # ("opt", steps)
            sub = dict(got)
            end = _match(step[1], text, pos, sub)
            if end == NEED:
                return NEED
            if end >= 0:
                got.update(sub)
                pos = end
    return pos


def _key(*names: str) -> list:
    return [("str", None, names), " ", ":", " "]


# {"name": "<name>", "arguments": { -- the header of a call, up to its arguments object
HEAD = [" ", "{", " ", *_key("name"), ("str", "name", None), " ", ",", " ", *_key("arguments", "parameters"),
        ("peek", "{")]  # fmt: skip
TYPE_FUNCTION = ("opt", [*_key("type"), ("str", None, ("function",)), " ", ",", " "])


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


def template_renders_tools(template_source: str | None) -> bool:
    """Whether a Jinja chat template puts ``tools`` into the prompt: it is rendered with
    one probe tool, as llama.cpp probes a template's capabilities."""
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


def _tool_lines(tools: list[dict], indent: int | None = None, sep: str = "\n") -> str:
    return sep.join(json.dumps(t, ensure_ascii=False, indent=indent) for t in tools)


def prepare_messages(fmt: ToolFormat, messages: list[dict], tools: list[dict], *,
                     template_renders_tools: bool) -> list[dict]:  # fmt: skip
    """A conversation with tools made ready for the chat template: the tool prompt
    (``prompt_tools``) joins the system message; past calls get their arguments as
    objects (the templates ``tojson`` them), one call a message for llama3 and 9-character
    ids for mistral, or, for ``generic``, become call blocks in the assistant's text, and
    tool results become user messages."""
    out = [dict(m) for m in messages]
    extra = fmt.prompt_tools(template_renders_tools, tools) if tools else None
    if extra:
        if out and out[0].get("role") == "system" and isinstance(out[0].get("content") or "", str):
            out[0]["content"] = ((out[0].get("content") or "").rstrip() + "\n\n" + extra).lstrip()
        else:
            out.insert(0, {"role": "system", "content": extra})
    result: list[dict] = []
    merging = False  # the last message holds tool results (generic): the next ones join it
    for m in out:
        calls = m.get("tool_calls") or []
        if m.get("role") == "assistant" and calls:
            if fmt is LLAMA3 and len(calls) > 1:  # its templates take one call a message
                result += [{**m, "content": "", "tool_calls": [_template_call(fmt, c)]} for c in calls]
                result[-len(calls)]["content"] = m.get("content") or ""
                merging = False
                continue
            if fmt.pass_tools_to_template:
                m["content"] = m.get("content") or ""
                m["tool_calls"] = [_template_call(fmt, c) for c in calls]
            else:
                blocks = [_hermes_block(c.get("function") or {}) for c in calls]
                text = "\n".join(filter(None, [m.get("content") or ""] + blocks))
                m = {"role": "assistant", "content": text}
        elif m.get("role") == "tool":
            if fmt is MISTRAL and m.get("tool_call_id") is not None:
                m["tool_call_id"] = _mistral_id(m["tool_call_id"])
            if not fmt.pass_tools_to_template:
                text = f"<tool_response>\n{_text(m.get('content'))}\n</tool_response>"
                if merging:
                    result[-1]["content"] += "\n" + text
                    continue
                m, merging = {"role": "user", "content": text}, True
                result.append(m)
                continue
        merging = False
        result.append(m)
    return result


def _arguments(fn: dict):
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args if args is not None else {}


def _template_call(fmt: ToolFormat, call: dict) -> dict:
    fn = dict(call.get("function") or {})
    fn["arguments"] = _arguments(fn)
    call = {**call, "function": fn}
    if fmt is MISTRAL:
        call["id"] = _mistral_id(call.get("id") or "")
    return call


def _hermes_block(fn: dict) -> str:
    body = {"name": fn.get("name", ""), "arguments": _arguments(fn)}
    return "<tool_call>\n" + json.dumps(body, ensure_ascii=False) + "\n</tool_call>"


def _mistral_id(call_id: str) -> str:
    """A call id as Mistral's templates require (9 letters or digits), the same for the
    call and its result."""
    if len(call_id) == 9 and call_id.isascii() and call_id.isalnum():
        return call_id
    n = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    return "".join(ALNUM[(n // 62**i) % 62] for i in range(9))


def _text(content) -> str:
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


class StreamParser:
    """Splits streamed output into events: ("content", text) for text outside calls
    (holding back only what could start a call, and whitespace that may turn out to
    precede one), ("call", index, id, name) when a call's name is known, and
    ("arguments", index, text) as its arguments arrive. ``feed`` and ``finish`` return
    the events; ``calls`` has the calls so far. At ``finish`` text held back for a
    call that never got its name and arguments is content; an announced call whose
    arguments were cut off keeps what arrived."""

    def __init__(self, fmt: ToolFormat, *, new_id=None):
        self.fmt, self.new_id = fmt, new_id or fmt.new_id
        self._calls: list[list] = []  # [id, name, [argument pieces]]
        self._buf = ""  # text not yet settled
        self._state = "content"  # content | section | args | tail | between
        self._word = ""  # the trigger word that opened the section being matched
        self._fresh = True  # only whitespace so far: a bare section may start
        self._trim = False  # whitespace here follows a call: drop it
        self._scan = (0, False, False)  # arguments: depth, in a string, after a backslash
        self._events: list = []

    @property
    def calls(self) -> list[ToolCall]:
        return [ToolCall(name, "".join(parts), id_) for id_, name, parts in self._calls]

    def feed(self, piece: str) -> list:
        self._buf += piece
        return self._run(final=False)

    def finish(self) -> list:
        return self._run(final=True)

    def _run(self, final: bool) -> list:
        while getattr(self, "_" + self._state)(final):
            pass
        events, self._events = self._events, []
        return events

    def _emit(self, text: str) -> None:
        if text:
            self._events.append(("content", text))
            self._fresh = self._fresh and not text.strip()

    def _announce(self, name: str, rest: str) -> bool:
        index, id_ = len(self._calls), self.new_id()
        self._calls.append([id_, name, []])
        self._events.append(("call", index, id_, name))
        self._buf, self._state, self._scan, self._fresh = rest, "args", (0, False, False), False
        return True

    def _content(self, final: bool) -> bool:
        buf = self._buf
        if self._trim:
            stripped = buf.lstrip(WHITESPACE)
            if not stripped:
                self._buf = "" if final else buf
                return False
            buf, self._trim = stripped, False
        if self._fresh and self.fmt.bare_start:
            got: dict = {}
            end = _match(self.fmt.open + self.fmt.head, buf, 0, got)
            if end >= 0:
                return self._announce(got["name"], buf[end:])
            if end == NEED and not final:
                self._buf = buf
                return False
            self._fresh = False
        hits = [(buf.find(w), w) for w in self.fmt.triggers if w in buf]
        if hits:
            at, self._word = min(hits)
            start = len(buf[:at].rstrip(WHITESPACE))
            self._emit(buf[:start])
            self._buf, self._state, self._fresh = buf[start:], "section", False
            return True
        if final:
            self._emit(buf)
            self._buf = ""
            return False
        held = next((k for k in range(min(len(buf), max(map(len, self.fmt.triggers), default=1) - 1), 0, -1)
                     if any(w.startswith(buf[-k:]) for w in self.fmt.triggers)), 0)  # fmt: skip
        cut = len(buf[: len(buf) - held].rstrip(WHITESPACE))
        self._emit(buf[:cut])
        self._buf = buf[cut:]
        return False

    def _section(self, final: bool) -> bool:
        buf = self._buf
        after = len(buf) - len(buf.lstrip(WHITESPACE)) + len(self._word)
        got: dict = {}
        end = _match(self.fmt.open + self.fmt.head, buf, after, got)
        if end >= 0:
            return self._announce(got["name"], buf[end:])
        if end == NEED and not final:
            return False
        self._emit(buf[:after])  # not a call after all: the trigger word is text
        self._buf, self._state = buf[after:], "content"
        return True

    def _args(self, final: bool) -> bool:
        depth, in_str, esc = self._scan
        buf, end = self._buf, None
        for i, c in enumerate(buf):
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        self._scan = (depth, in_str, esc)
        text = buf if end is None else buf[:end]
        if text:
            self._calls[-1][2].append(text)
            self._events.append(("arguments", len(self._calls) - 1, text))
        if end is None:
            self._buf = ""
            return False
        self._buf, self._state = buf[end:], "tail"
        return True

    def _tail(self, final: bool) -> bool:
        end = _match(self.fmt.tail, self._buf, 0, {})
        if end >= 0:
            self._buf, self._state = self._buf[end:], "between"
            return True
        if end == NEED:
            if not final:
                return False
            self._buf = ""  # the call's own closing syntax, cut off
        self._state, self._trim = "content", True
        return True

    def _between(self, final: bool) -> bool:
        buf = self._buf
        if self.fmt.next is not None:
            got: dict = {}
            end = _match(self.fmt.next + self.fmt.head, buf, 0, got)
            if end >= 0:
                return self._announce(got["name"], buf[end:])
            if end == NEED and not final:
                return False
        end = _match(self.fmt.close, buf, 0, {})
        if end == NEED and not final:
            return False
        if end == NEED:
            buf = ""  # the section's closing syntax, cut off
        self._buf, self._state, self._trim = buf[max(end, 0) :], "content", True
        return True
