"""OpenAI's Responses API (``POST /v1/responses``), stateless: the request becomes the
same chat request the chat API makes (``generate.prepare_chat``), and the reply becomes
Responses' output items (``responses_stream.Items``), whole or as named events.

Nothing is stored, so everything that refers to an earlier response (``previous_response_id``,
``conversation``, ``item_reference`` items, ``background``) is a 400: a client sends the
whole conversation in ``input``, as it does with the chat API."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from . import api, chat_api, generate
from .responses_stream import Items, new_id, stream

FIELDS = {"input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "tools",
          "tool_choice", "parallel_tool_calls", "text", "truncation", "reasoning", "include",
          "top_logprobs", "background", "conversation", "previous_response_id"}  # fmt: skip
STATELESS = "this server is stateless: send the whole conversation in 'input'"
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
TOOL_KEYS = {"type", "name", "description", "parameters", "strict"}


def create(app, h, body: dict) -> None:
    from .routes import ClientGone

    api.check_model(body)
    req, echo = request(body, app.defaults, app.default_max)
    w = app.ready()
    try:
        p = generate.prepare_chat(app, w, req)
    except api.ApiError as e:  # the conversation came as 'input', not as chat's 'messages'
        e.param = "input" if e.param == "messages" else e.param
        raise
    shell = {"id": new_id("resp"), "object": "response", "created_at": int(time.time()),
             "status": "in_progress", "model": app.model_id, **echo, "output": [], "usage": None}  # fmt: skip

    def done(items: Items, stats) -> dict:
        return finished(shell, items, stats, lambda t: len(w.engine.model.tokenize(t, add_special=False)))

    try:
        if req.stream:
            stream(app, h, p, shell, done)
        else:
            h.send_json(200, _whole(app, h, p, done))
    except ClientGone:
        h.close_connection = True


def _whole(app, h, p: generate.Prepared, done) -> dict:
    texts = [event[1] for _, event in app.run(h, p.jobs) if event[0] == "piece"]
    reply, items = p.replies[0], Items()
    items.feed(reply.feed("".join(texts)))
    items.feed(reply.finish())
    return done(items, p.jobs[0].stats)


def finished(shell: dict, items: Items, stats, count) -> dict:
    """The response once its text is all there. ``count(text)``: the tokens of a text."""
    cut = stats.finish_reason == "length"
    items.close("incomplete" if cut else "completed")
    # The engine does not label tokens, so the reasoning ones are counted again from their
    # text (without its thinking markers: a token or two low).
    thought = sum(count(part["text"]) for item in items.output if item["type"] == "reasoning"
                  for part in item["content"])  # fmt: skip
    return {
        **shell,
        "status": "incomplete" if cut else "completed",
        "completed_at": None if cut else int(time.time()),
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "output": items.output,
        "usage": {
            "input_tokens": stats.prompt_tokens,
            "input_tokens_details": {"cached_tokens": stats.cached_tokens},
            "output_tokens": stats.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": min(thought, stats.completion_tokens)},
            "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        },
    }


# -- the request ------------------------------------------------------------------------
def request(body: dict, defaults, default_max: int) -> tuple[api.GenRequest, dict]:
    """The chat request a Responses request asks for, and the request's settings as the
    response echoes them."""
    _refuse(body)
    api.check_fields(body, FIELDS)
    chat_tools, tool_echo = tools(body.get("tools"))
    names = [t["function"]["name"] for t in chat_tools]
    choice = chat_api.tool_choice(_chat_choice(body.get("tool_choice")), names)
    if choice not in ("auto", "none") and not chat_tools:
        raise api.ApiError(400, "'tool_choice' needs 'tools'", param="tool_choice")
    grammar, fmt = text_format(body.get("text"))
    if chat_tools and choice != "none" and grammar["grammar"]:
        raise api.ApiError(400, "'tools' and a JSON 'text.format' do not go together", param="tools")
    max_tokens = api.number(body, "max_output_tokens", 1, 2**31 - 1, integer=True)
    changes = {}
    for key, field in (("temperature", "temp"), ("top_p", "top_p")):
        value = api.number(body, key, 0, 2 if key == "temperature" else 1)
        if value is not None:
            changes[field] = value
    req = api.GenRequest(
        messages=conversation(body.get("input"), body.get("instructions")), prompt=None,
        sampling=replace(defaults, **changes), max_tokens=default_max if max_tokens is None else max_tokens,
        stop=[], stream=api.boolean(body, "stream"), include_usage=False,
        tools=chat_tools if choice != "none" else [], tool_choice=choice,
        parallel_tool_calls=api.boolean(body, "parallel_tool_calls"), **grammar,
    )  # fmt: skip
    echo = {
        "background": False, "error": None, "incomplete_details": None,
        "instructions": body.get("instructions"), "max_output_tokens": max_tokens,
        "metadata": _metadata(body.get("metadata")), "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": None, "reasoning": _reasoning(body.get("reasoning")),
        # Nothing is kept, whatever 'store' asked: the response says so.
        "store": False, "temperature": req.sampling.temp, "text": {"format": fmt},
        "tool_choice": body.get("tool_choice") or "auto", "tools": tool_echo, "top_logprobs": 0,
        "top_p": req.sampling.top_p, "truncation": "disabled", "user": body.get("user"),
    }  # fmt: skip
    return req, echo


def _refuse(body: dict) -> None:
    """Fields this server knows but cannot honour with the values given."""
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise api.ApiError(400, f"'{key}' is not supported: {STATELESS}", param=key)
    if body.get("background"):
        raise api.ApiError(400, "'background' is not supported: nothing is stored to fetch later; "
                           "use 'stream'", param="background")  # fmt: skip
    if body.get("include"):  # what it can add (logprobs, encrypted reasoning, ...) this server has not
        raise api.ApiError(400, f"'include' is not supported (got {body['include']!r})", param="include")
    if body.get("top_logprobs"):
        raise api.ApiError(400, "'top_logprobs' is not supported here; /v1/chat/completions has "
                           "log-probabilities", param="top_logprobs")  # fmt: skip
    if body.get("truncation") not in (None, "disabled"):
        raise api.ApiError(400, "'truncation' must be 'disabled': an input longer than the context "
                           "is refused, never cut", param="truncation")  # fmt: skip


def _metadata(raw) -> dict:
    if raw is not None and not isinstance(raw, dict):
        raise api.ApiError(400, "'metadata' must be an object", param="metadata")
    return raw or {}


def _reasoning(raw) -> dict:
    """``effort`` is a hint (as chat's ``reasoning_effort``): a model thinks as its template
    makes it. The whole reasoning comes in the reasoning item's content; there is no
    summarizer, so ``summary`` may only be left to the server ("auto")."""
    if raw is None:
        return {"effort": None, "summary": None}
    if not isinstance(raw, dict):
        raise api.ApiError(400, "'reasoning' must be an object", param="reasoning")
    for key in raw:
        if key not in ("effort", "summary"):
            raise api.ApiError(400, f"'reasoning.{key}' is not supported", param="reasoning")
    if raw.get("effort") is not None and not isinstance(raw["effort"], str):
        raise api.ApiError(400, "'reasoning.effort' must be a string", param="reasoning")
    if raw.get("summary") not in (None, "auto"):
        raise api.ApiError(400, "'reasoning.summary' must be 'auto': this server has no summaries; the "
                           "reasoning item's content has the whole reasoning", param="reasoning")  # fmt: skip
    return {"effort": raw.get("effort"), "summary": raw.get("summary")}


def tools(raw) -> tuple[list[dict], list[dict]]:
    """Responses' flat function tools as chat's tools (checked by chat_api.tools), and as
    the response echoes them."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise api.ApiError(400, "'tools' must be a list", param="tools")
    chat, echo = [], []
    for i, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise api.ApiError(400, f"tools[{i}]: {kind!r} tools are not supported: this server runs "
                               "function tools only", param="tools")  # fmt: skip
        extra = sorted(tool.keys() - TOOL_KEYS)
        if extra:
            raise api.ApiError(400, f"tools[{i}].{extra[0]} is not supported", param="tools")
        if not isinstance(tool.get("strict", True), bool):
            raise api.ApiError(400, f"tools[{i}].strict must be true or false", param="tools")
        fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        chat.append({"type": "function", "function": fn})
        # The grammar holds every call to its schema, so a tool is always strict in effect.
        echo.append({"type": "function", "name": tool.get("name"), "description": tool.get("description"),
                     "parameters": tool.get("parameters"), "strict": tool.get("strict", True)})  # fmt: skip
    try:
        chat_api.tools(chat)
    except api.ApiError as e:  # chat's messages name chat's nesting ("tools[0].function.name")
        raise api.ApiError(400, e.message.replace("].function.", "]."), param="tools") from None
    return chat, echo


def _chat_choice(raw):
    """Responses' ``{"type": "function", "name"}`` as chat's tool_choice."""
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if not isinstance(raw, dict) or raw.get("type") != "function" or not isinstance(raw.get("name"), str):
        raise api.ApiError(400, "'tool_choice' must be auto, none, required or {\"type\": \"function\", "
                           "\"name\": ...}", param="tool_choice")  # fmt: skip
    return {"type": "function", "function": {"name": raw["name"]}}


def text_format(raw) -> tuple[dict, dict]:
    """``text.format`` as the grammar and schema chat's ``response_format`` would give, and
    the format as the response echoes it."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise api.ApiError(400, "'text' must be an object", param="text")
    for key in raw:
        if key != "format" and (key != "verbosity" or raw[key] is not None):
            raise api.ApiError(400, f"'text.{key}' is not supported", param="text")
    fmt = raw.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise api.ApiError(400, "'text.format' must be {\"type\": \"text\"|\"json_object\"|\"json_schema\"}",
                           param="text.format")  # fmt: skip
    rf: dict = {"type": kind}
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise api.ApiError(400, "'text.format' of type json_schema needs a 'name' and a 'schema' object",
                               param="text.format")  # fmt: skip
        rf["json_schema"] = {"name": fmt["name"], "schema": fmt["schema"]}
    try:
        return api.structured({"response_format": rf}), fmt
    except api.ApiError as e:  # the schema has what the grammar converter cannot take
        raise api.ApiError(400, e.message, param="text.format") from None


def conversation(raw, instructions) -> list[dict]:
    """``instructions`` and ``input`` as chat messages, checked by chat_api.messages."""
    msgs: list[dict] = []
    if instructions is not None:
        if not isinstance(instructions, str):
            raise api.ApiError(400, "'instructions' must be a string", param="instructions")
        if instructions:
            msgs.append({"role": "system", "content": instructions})
    if isinstance(raw, str):
        raw = [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise api.ApiError(400, "'input' must be a string or a non-empty list of items", param="input")
    names: dict[str, str] = {}  # call_id -> function name, for the tool messages that answer
    for i, item in enumerate(raw):
        _item(msgs, item, i, names)
    return chat_api.messages(msgs)


def _item(msgs: list, item, i: int, names: dict) -> None:
    if not isinstance(item, dict):
        raise api.ApiError(400, f"input[{i}] must be an object", param="input")
    kind = item.get("type") or "message"
    if kind == "message":
        if item.get("role") not in ROLES:
            raise api.ApiError(400, f"input[{i}] needs a role of user, assistant, system or developer",
                               param="input")  # fmt: skip
        msgs.append({"role": item["role"], "content": _text(item.get("content"), f"input[{i}].content")})
    elif kind == "function_call":
        _call(msgs, item, i, names)
    elif kind == "function_call_output":
        msgs.append(_output(item, i, names))
    elif kind == "item_reference":
        raise api.ApiError(400, f"input[{i}]: 'item_reference' is not supported: {STATELESS}", param="input")
    elif kind != "reasoning":
        raise api.ApiError(400, f"input[{i}]: {kind!r} items are not supported: this server takes messages, "
                           "function calls and their outputs", param="input")  # fmt: skip
    # A reasoning item is skipped: earlier turns' thinking is not shown to the model again (chat
    # templates drop it, and chat's reasoning_content is not sent back either).


def _output(item: dict, i: int, names: dict) -> dict:
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        raise api.ApiError(400, f"input[{i}]: a function_call_output needs a string 'call_id'", param="input")
    text = _text(item.get("output"), f"input[{i}].output")
    msg = {"role": "tool", "tool_call_id": call_id, "content": text}
    if call_id in names:
        msg["name"] = names[call_id]
    return msg


def _call(msgs: list, item: dict, i: int, names: dict) -> None:
    name, call_id, args = item.get("name"), item.get("call_id"), item.get("arguments")
    if not all(isinstance(v, str) for v in (name, call_id, args)):
        raise api.ApiError(400, f"input[{i}]: a function_call needs string 'call_id', 'name' and 'arguments'",
                           param="input")  # fmt: skip
    try:
        parsed = json.loads(args or "{}")
    except ValueError:
        raise api.ApiError(400, f"input[{i}].arguments is not valid JSON", param="input") from None
    names[call_id] = name
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": parsed}}
    last = msgs[-1] if msgs else None
    if last and last["role"] == "assistant":  # one turn's text and calls are one chat message
        last.setdefault("tool_calls", []).append(call)
    else:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise api.ApiError(400, f"{where} must be a string or a list of input_text parts", param="input")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise api.ApiError(400, f"{where}[{j}]: {kind} is not supported (text only)", param="input")
        else:
            raise api.ApiError(400, f"{where}[{j}] must be an input_text or output_text part", param="input")
    return "".join(parts)
