"""Anthropic's Messages API (``POST /v1/messages`` and ``/v1/messages/count_tokens``).

A request is translated into the chat request OpenAI's chat API makes (``api.GenRequest``
with ``chat_api``'s message dicts), prepared and run by ``generate`` like any chat, and its
reply is reshaped into Anthropic's content blocks by ``anthropic_stream``. So the prompt,
tool calls, grammar and sampling are the same for both APIs; only the shapes differ.

On purpose, unlike Anthropic's own API: ``temperature`` takes 0-2 as the OpenAI API does,
and an unset one is the bundle's default, not 1; ``top_k``/``top_p`` likewise; at most
``api.MAX_STOP`` stop sequences; one tool call per answer unless the request sets
``disable_parallel_tool_use: false`` (as this server's and llama-server's OpenAI default:
small models given leave to call again tend to repeat the same call until max_tokens);
a tool result with ``is_error`` reaches the model as text that starts "Error: ";
``cache_control`` anywhere, ``metadata`` and ``service_tier`` are accepted and change
nothing (the engine reuses cached prompt prefixes on its own); thinking blocks in the
history are dropped, as Anthropic drops those of earlier turns; ``output_config.format``
is a grammar, which cannot go with ``tools``; every tool is ``strict`` (a grammar keeps
its calls to its schema); ``thinking``, ``output_config.effort``,
images, documents and server tools are a 400 that names them.
"""

from __future__ import annotations

from . import anthropic_stream, api, chat_api, generate

# Fields of a Messages request this server honours; count_tokens takes those that shape
# the prompt. HINTS change nothing and are accepted.
FIELDS = {"max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream",
          "tools", "tool_choice", "output_config"}  # fmt: skip
COUNT_FIELDS = {"messages", "system", "tools", "tool_choice", "output_config"}
HINTS = {"model", "metadata", "service_tier", "cache_control"}
WHY = {"thinking": "a reasoning model thinks on its own here (its thinking comes back as thinking "
                   "blocks) and no thinking budget can be set"}  # fmt: skip
# The keys each content block may have, by role; any other block type is a 400.
BLOCKS = {
    "user": {"text": {"text"}, "tool_result": {"tool_use_id", "content", "is_error"}},
    "assistant": {"text": {"text"}, "tool_use": {"id", "name", "input"},
                  "thinking": {"thinking", "signature"}, "redacted_thinking": {"data"}},
}  # fmt: skip
TOOL_KEYS = {"name", "description", "input_schema", "type", "cache_control", "strict"}
CHOICES = {"auto": "auto", "any": "required", "none": "none", "tool": None}
SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "stream")  # named as in api.common


def messages(app, h, body: dict) -> None:
    from .routes import ClientGone

    req = chat_request(body, app.defaults)
    p = generate.prepare_chat(app, app.ready(), req)
    try:
        (anthropic_stream.stream if req.stream else anthropic_stream.whole)(app, h, p)
    except ClientGone:
        h.close_connection = True


def count_tokens(app, h, body: dict) -> None:
    """The prompt's length in tokens, as the template and tools make it (nothing runs)."""
    p = generate.prepare_chat(app, app.ready(), chat_request(body, app.defaults, counting=True))
    h.send_json(200, {"input_tokens": len(p.tokens)})


def chat_request(body: dict, defaults, *, counting: bool = False) -> api.GenRequest:
    _check_fields(body, COUNT_FIELDS if counting else FIELDS)
    api.check_model(body)
    if not counting and body.get("max_tokens") is None:
        raise api.ApiError(400, "'max_tokens' is required", param="max_tokens")
    tools = _tools(body.get("tools"))
    choice, parallel = _tool_choice(body.get("tool_choice"), [t["function"]["name"] for t in tools])
    # one choice; the default max_tokens (1) only stands in for count_tokens, which runs nothing
    common = api.common({k: body[k] for k in SAMPLING if k in body}, defaults, 1, 1)
    common["stop"] = _stop_sequences(body.get("stop_sequences"))
    common.update(_output_config(body.get("output_config")))
    if tools and choice != "none" and common["grammar"]:
        raise api.ApiError(400, "'tools' and output_config.format do not go together here; send one",
                           param="output_config")  # fmt: skip
    return api.GenRequest(messages=_system(body.get("system")) + _messages(body.get("messages")),
                          prompt=None, tools=tools if choice != "none" else [], tool_choice=choice,
                          parallel_tool_calls=parallel, **common)  # fmt: skip


def _check_fields(body: dict, known: set[str]) -> None:
    """A field the server cannot honour is refused by name, never silently ignored."""
    for key in body:
        if key not in known and key not in HINTS:
            why = f" ({WHY[key]})" if key in WHY else ""
            raise api.ApiError(400, f"'{key}' is not supported by this server{why}; remove it", param=key,
                               code="unsupported_parameter")  # fmt: skip


def _system(raw) -> list[dict]:
    if raw is None:
        return []
    text = raw if isinstance(raw, str) else _text(_blocks(raw, "system", {"text": {"text"}}))
    return [{"role": "system", "content": text}] if text else []


def _messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise api.ApiError(400, "'messages' must be a non-empty list", param="messages")
    out: list[dict] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in BLOCKS:
            raise api.ApiError(400, f"{where} needs a role of user or assistant (system text goes in "
                               "'system')", param="messages")  # fmt: skip
        if set(m) - {"role", "content"}:
            raise api.ApiError(400, f"{where} may hold only 'role' and 'content'", param="messages")
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        blocks = _blocks(blocks, where + ".content", BLOCKS[m["role"]])
        for msg in _user(blocks, where) if m["role"] == "user" else [_assistant(blocks, where)]:
            _append(out, msg)
    return out


def _append(out: list[dict], msg: dict) -> None:
    """Consecutive user (or assistant) turns are one turn, as Anthropic combines them; many
    templates insist that roles alternate."""
    last = out[-1] if out else None
    if last is None or last["role"] != msg["role"] or msg["role"] == "tool":
        out.append(msg)
        return
    last["content"] = "\n\n".join(filter(None, [last["content"], msg["content"]]))
    if msg.get("tool_calls"):
        last["tool_calls"] = last.get("tool_calls", []) + msg["tool_calls"]


def _blocks(raw, where: str, kinds: dict) -> list[dict]:
    """Content blocks checked: a type of ``kinds`` and only that type's keys (cache_control
    and unset keys aside)."""
    if not isinstance(raw, list):
        raise api.ApiError(400, f"{where} must be a string or a list of content blocks", param="messages")
    for j, b in enumerate(raw):
        kind = b.get("type") if isinstance(b, dict) else None
        if kind not in kinds:
            allowed = ", ".join(kinds)
            raise api.ApiError(400, f"{where}[{j}]: {kind!r} blocks are not supported here (only {allowed})",
                               param="messages")  # fmt: skip
        keys = kinds[kind] | {"type", "cache_control"}
        extra = [k for k, v in b.items() if v is not None and k not in keys]
        if extra:
            raise api.ApiError(400, f"{where}[{j}].{extra[0]} is not supported", param="messages")
        if kind == "text" and not isinstance(b.get("text"), str):
            raise api.ApiError(400, f"{where}[{j}].text must be a string", param="messages")
    return raw


def _text(blocks: list[dict]) -> str:
    """Text blocks' text, each block a paragraph (clients send reminders and the question as
    separate blocks)."""
    return "\n\n".join(b["text"] for b in blocks)


def _user(blocks: list[dict], where: str) -> list[dict]:
    """A user turn: tool results become "tool" messages, text a user message, in order."""
    out: list[dict] = []
    for j, b in enumerate(blocks):
        if b["type"] == "text":
            _append(out, {"role": "user", "content": b["text"]})
        else:
            out.append(_tool_result(b, f"{where}.content[{j}]"))
    return out


def _tool_result(b: dict, where: str) -> dict:
    if not isinstance(b.get("tool_use_id"), str):
        raise api.ApiError(400, f"{where}.tool_use_id must be a string", param="messages")
    content = b.get("content") or ""
    if not isinstance(content, str):
        content = _text(_blocks(content, where + ".content", {"text": {"text"}}))
    if api.boolean(b, "is_error"):
        content = "Error: " + content  # the chat templates have no other way to say it
    return {"role": "tool", "tool_call_id": b["tool_use_id"], "content": content}


def _assistant(blocks: list[dict], where: str) -> dict:
    texts, calls = [], []
    for j, b in enumerate(blocks):
        if b["type"] == "text":
            texts.append(b)
        elif b["type"] == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise api.ApiError(400, f"{where}.content[{j}] needs an 'id' and a 'name'", param="messages")
            if not isinstance(b.get("input"), dict):
                raise api.ApiError(400, f"{where}.content[{j}].input must be an object", param="messages")
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"], "arguments": b["input"]}})  # fmt: skip
        # thinking blocks are dropped: Anthropic too drops the thinking of earlier turns
    msg = {"role": "assistant", "content": _text(texts)}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tools(raw) -> list[dict]:
    """Anthropic's custom tools as OpenAI function tools (chat_api.tools checks the rest)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise api.ApiError(400, "'tools' must be a list", param="tools")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict):
            raise api.ApiError(400, f"tools[{i}] must be an object", param="tools")
        if t.get("type") not in (None, "custom"):
            raise api.ApiError(400, f"tools[{i}] is a server tool ({t['type']!r}); this server runs only "
                               "custom tools (name, description, input_schema)", param="tools")  # fmt: skip
        extra = [k for k, v in t.items() if v is not None and k not in TOOL_KEYS]
        if extra:
            raise api.ApiError(400, f"tools[{i}].{extra[0]} is not supported", param="tools")
        if not isinstance(t.get("name"), str) or not chat_api.TOOL_NAME.match(t["name"]):
            raise api.ApiError(400, f"tools[{i}].name must be 1-64 letters, digits, _ or -", param="tools")
        if not isinstance(t.get("input_schema"), dict):
            raise api.ApiError(400, f"tools[{i}].input_schema must be a JSON schema object", param="tools")
        if not isinstance(t.get("description", ""), str):
            raise api.ApiError(400, f"tools[{i}].description must be a string", param="tools")
        fn = {"name": t["name"], "description": t.get("description", ""), "parameters": t["input_schema"]}
        out.append({"type": "function", "function": fn})
    return chat_api.tools(out)


def _tool_choice(raw, names: list[str]) -> tuple[object, bool]:
    """OpenAI's tool_choice and whether several calls may come (only when asked for)."""
    if raw is None:
        return "auto", False
    if not isinstance(raw, dict) or raw.get("type") not in CHOICES:
        raise api.ApiError(400, "'tool_choice' must be {\"type\": \"auto\"|\"any\"|\"tool\"|\"none\"}",
                           param="tool_choice")  # fmt: skip
    extra = set(raw) - {"type", "disable_parallel_tool_use"} - ({"name"} if raw["type"] == "tool" else set())
    if extra:
        raise api.ApiError(400, f"tool_choice.{sorted(extra)[0]} is not supported", param="tool_choice")
    if raw["type"] != "none" and raw["type"] != "auto" and not names:
        raise api.ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
    parallel = not api.boolean(raw, "disable_parallel_tool_use", default=True)
    if raw["type"] != "tool":
        return CHOICES[raw["type"]], parallel
    if raw.get("name") not in names:
        raise api.ApiError(
            400, f"tool_choice.name {raw.get('name')!r} is not among 'tools'", param="tool_choice"
        )
    return {"type": "function", "function": {"name": raw["name"]}}, parallel


def _output_config(raw) -> dict:
    """Structured outputs: ``format`` makes the reply JSON that matches its schema (a grammar)."""
    from ..errors import UsageError
    from ..llama.schema import json_grammar

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise api.ApiError(400, "'output_config' must be an object", param="output_config")
    extra = [k for k, v in raw.items() if v is not None and k != "format"]
    if extra:  # "effort": a local model has no effort levels
        raise api.ApiError(400, f"output_config.{extra[0]} is not supported", param="output_config")
    fmt = raw.get("format")
    if fmt is None:
        return {}
    if not isinstance(fmt, dict) or set(fmt) != {"type", "schema"} or fmt["type"] != "json_schema":
        raise api.ApiError(400, "output_config.format must be {\"type\": \"json_schema\", \"schema\": {...}}",
                           param="output_config")  # fmt: skip
    try:
        return {"grammar": json_grammar(fmt["schema"]), "json_schema": fmt["schema"]}
    except UsageError as e:
        raise api.ApiError(400, f"output_config.format.schema: {e}", param="output_config") from None


def _stop_sequences(raw) -> list[str]:
    stops = [] if raw is None else raw
    ok = isinstance(stops, list) and len(stops) <= api.MAX_STOP
    if not ok or not all(isinstance(s, str) and s for s in stops):
        raise api.ApiError(400, f"'stop_sequences' must be a list of up to {api.MAX_STOP} non-empty strings",
                           param="stop_sequences")  # fmt: skip
    return stops
