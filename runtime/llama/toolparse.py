"""Reading tool calls out of a model's output as it streams (``StreamParser``), in the
syntax of a ``toolcalls.ToolFormat``. A call becomes a call once its name and the ``{``
of its arguments are seen: text that breaks off or goes wrong before that (bad JSON,
another shape, a cut-off header) is content. After that the call stands, and its
arguments are the text of the JSON object as the model wrote it: complete and valid with
a grammar, possibly cut off when the output hit its length limit (as OpenAI's own can
be). Whitespace between content and a call is dropped."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .toolcalls import ToolFormat

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
