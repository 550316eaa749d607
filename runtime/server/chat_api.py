"""Checking a chat request: messages (with tool calls and tool results), tools and
tool_choice, log-probabilities, reasoning and template options (no I/O here)."""

from __future__ import annotations

import json
import re

from ..llama.job import Sampling
from .api import COMMON, MAX_N, MAX_TOP_LOGPROBS, ApiError, GenRequest, boolean, check_fields, common, number

ROLES = ("system", "developer", "user", "assistant", "tool")
CHAT = COMMON | {"messages", "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls",
                 "reasoning_format", "chat_template_kwargs"}  # fmt: skip
REASONING_FORMATS = ("auto", "deepseek", "deepseek-legacy", "none")
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _content(msg: dict, i: int) -> str:
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        parts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) and part.get("type") == "text" else None
            if not isinstance(text, str):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string", param="messages")


def _tool_calls(calls, i: int) -> list[dict]:
    """An assistant message's earlier tool calls, with their arguments as objects (chat
    templates write them with ``tojson``)."""
    if not isinstance(calls, list):
        raise ApiError(400, f"messages[{i}].tool_calls must be a list", param="messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"messages[{i}].tool_calls[{j}] needs function.name", param="messages")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                args = json.loads(args or "{}")
            except ValueError:
                raise ApiError(400, f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON",
                               param="messages") from None  # fmt: skip
        out.append({"id": str(call.get("id") or f"call_{i}_{j}"), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})  # fmt: skip
    return out


def messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(
                400, f"messages[{i}] needs a role of system, user, assistant or tool", param="messages"
            )
        role = "system" if m["role"] == "developer" else m["role"]
        msg = {"role": role, "content": _content(m, i)}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], i)
        if role == "tool":
            if not isinstance(m.get("tool_call_id", ""), str):
                raise ApiError(400, f"messages[{i}].tool_call_id must be a string", param="messages")
            msg["tool_call_id"] = m.get("tool_call_id", "")
            if isinstance(m.get("name"), str):
                msg["name"] = m["name"]
        out.append(msg)
    return out


def tools(raw) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "'tools' must be a list", param="tools")
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}",
                           param="tools")  # fmt: skip
        if not isinstance(fn.get("name"), str) or not TOOL_NAME.match(fn["name"]):
            raise ApiError(
                400, f"tools[{i}].function.name must be 1-64 letters, digits, _ or -", param="tools"
            )
        if not isinstance(fn.get("parameters", {}), dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
    names = [t["function"]["name"] for t in raw]
    if len(set(names)) != len(names):
        raise ApiError(400, "'tools' has two functions of the same name", param="tools")
    return raw


def tool_choice(raw, names: list[str]):
    if raw is None:
        return "auto"
    if raw in ("auto", "none", "required"):
        return raw
    fn = raw.get("function") if isinstance(raw, dict) and raw.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ApiError(400, "'tool_choice' must be auto, none, required or {\"type\": \"function\", "
                       "\"function\": {\"name\": ...}}", param="tool_choice")  # fmt: skip
    if fn["name"] not in names:
        raise ApiError(
            400, f"'tool_choice' names {fn['name']!r}, which is not among 'tools'", param="tool_choice"
        )
    return {"type": "function", "function": {"name": fn["name"]}}


def chat_request(body: dict, defaults: Sampling, default_max: int, max_n: int = MAX_N) -> GenRequest:
    check_fields(body, CHAT)
    msgs = messages(body.get("messages"))
    tool_list = tools(body.get("tools"))
    choice = tool_choice(body.get("tool_choice"), [t["function"]["name"] for t in tool_list])
    if choice != "auto" and choice != "none" and not tool_list:
        raise ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
    want_logprobs = boolean(body, "logprobs")
    top = number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True)
    if top is not None and not want_logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    fmt = body.get("reasoning_format") or "auto"
    if fmt not in REASONING_FORMATS:
        raise ApiError(400, f"'reasoning_format' must be one of {', '.join(REASONING_FORMATS)}",
                       param="reasoning_format")  # fmt: skip
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object", param="chat_template_kwargs")
    req = GenRequest(messages=msgs, prompt=None, logprobs=(top or 0) if want_logprobs else None,
                     tools=tool_list if choice != "none" else [], tool_choice=choice,
                     parallel_tool_calls=boolean(body, "parallel_tool_calls", False),
                     reasoning_format="none" if fmt == "none" else "auto", template_kwargs=kwargs,
                     **common(body, defaults, default_max, max_n))  # fmt: skip
    if req.tools and req.grammar:
        raise ApiError(400, "'tools' and a response format or grammar do not go together", param="tools")
    return req
