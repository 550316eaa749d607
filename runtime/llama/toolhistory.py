"""A conversation with tools made ready for a chat template: the tools described where
the template does not present them, past calls and tool results in the shape each
family's template expects."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from .toolparse import ALNUM

if TYPE_CHECKING:
    from .toolcalls import ToolFormat


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
            if fmt.name == "llama3" and len(calls) > 1:  # its templates take one call a message
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
            if fmt.name == "mistral" and m.get("tool_call_id") is not None:
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
    if fmt.name == "mistral":
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
