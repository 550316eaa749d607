"""Anthropic's response shapes (a Messages reply as one JSON message or as its stream of
named events), built from the OpenAI-style deltas a ``reply.Reply`` gives, so a streamed
reply and a whole one are the same blocks."""

from __future__ import annotations

import json
import os

from . import api

PATH = "/v1/messages"  # api.error_body gives Anthropic's error shape for it


class Blocks:
    """One reply's content blocks: thinking, text and tool_use, in the order the model
    wrote them. ``add`` takes a delta and returns the stream events (name, payload) that
    say the same; ``close`` ends the open block."""

    def __init__(self):
        self.blocks: list[dict] = []
        self.open = None  # the key of the block being written: "thinking", "text" or ("tool_use", index)
        self.arguments: dict[int, str] = {}  # block index -> the tool call's JSON text so far
        self.calls: dict[int, int] = {}  # tool call index -> block index

    def add(self, delta: dict) -> list[tuple[str, dict]]:
        events = []
        if delta.get("reasoning_content"):
            events += self._text("thinking", delta["reasoning_content"])
        if delta.get("content"):
            events += self._text("text", delta["content"])
        for call in delta.get("tool_calls") or ():
            events += self._call(call)
        return events

    def close(self) -> list[tuple[str, dict]]:
        if self.open is None:
            return []
        self.open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": len(self.blocks) - 1})]

    def content(self) -> list[dict]:
        """The finished blocks, each tool_use with its input as an object."""
        out = [dict(b) for b in self.blocks]
        for i, text in self.arguments.items():
            out[i]["input"] = tool_input(text)
        return out

    def _text(self, kind: str, text: str) -> list[tuple[str, dict]]:
        block = {"type": kind, kind: ""} | ({"signature": ""} if kind == "thinking" else {})
        events = self._start(kind, block)
        self.blocks[-1][kind] += text
        return events + [self._delta({"type": f"{kind}_delta", kind: text})]

    def _call(self, call: dict) -> list[tuple[str, dict]]:
        events = []
        if call.get("id"):  # a new call: its id and name come first, its arguments after
            name = call["function"]["name"]
            block = {"type": "tool_use", "id": tool_id(call["id"]), "name": name, "input": {}}
            events = self._start(("tool_use", call["index"]), block)
            self.calls[call["index"]] = len(self.blocks) - 1
            self.arguments[len(self.blocks) - 1] = ""
        text = call["function"].get("arguments") or ""
        if text:
            self.arguments[self.calls[call["index"]]] += text
            events.append(self._delta({"type": "input_json_delta", "partial_json": text}))
        return events

    def _start(self, key, block: dict) -> list[tuple[str, dict]]:
        if self.open == key:
            return []
        events = self.close()
        self.open = key
        self.blocks.append(block)
        start = {"type": "content_block_start", "index": len(self.blocks) - 1, "content_block": dict(block)}
        return events + [("content_block_start", start)]

    def _delta(self, delta: dict) -> tuple[str, dict]:
        index = len(self.blocks) - 1
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def tool_id(call_id: str) -> str:
    """Anthropic's "toolu_" ids; the same id comes back in the tool_result that answers it."""
    return "toolu_" + call_id.removeprefix("call_")


def tool_input(text: str) -> dict:
    """A call's arguments as an object. The grammar makes them a complete object; only a
    reply cut by max_tokens (its stop_reason says so) can leave them unfinished: {}."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def stop_reason(stats, stops: list[str], tool_calls: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). Only the request's own stop sequences are
    "stop_sequence": the template's end marker ends a turn."""
    if stats.finish_reason == "length":
        return "max_tokens", None
    if tool_calls:
        return "tool_use", None
    if stats.stop_word is not None and stats.stop_word in stops:
        return "stop_sequence", stats.stop_word
    return "end_turn", None


def usage(stats) -> dict:
    """Anthropic counts a prompt's cached part apart from the rest of its input."""
    cached = stats.cached_tokens
    return {"input_tokens": stats.prompt_tokens - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": stats.completion_tokens}  # fmt: skip


def message(mid: str, model: str, content: list, reason, sequence, stats) -> dict:
    return {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": reason, "stop_sequence": sequence, "usage": usage(stats)}  # fmt: skip


def new_id() -> str:
    return f"msg_{os.urandom(12).hex()}"


def whole(app, h, p) -> None:
    """The reply as one message."""
    text = "".join(event[1] for _, event in app.run(h, p.jobs) if event[0] == "piece")
    reply, blocks, stats = p.replies[0], Blocks(), p.jobs[0].stats
    for delta in reply.feed(text) + reply.finish():
        blocks.add(delta)
    reason, sequence = stop_reason(stats, p.req.stop, bool(reply.calls))
    h.send_json(200, message(new_id(), app.model_id, blocks.content(), reason, sequence, stats))


def stream(app, h, p) -> None:
    """The reply as Anthropic's events: message_start, each block's start, deltas and stop,
    message_delta (the stop reason and usage), message_stop."""
    events = app.run(h, p.jobs)
    first = next(events)  # an error before any output still gets a proper status code
    reply, blocks, job = p.replies[0], Blocks(), p.jobs[0]
    h.start_events()
    try:
        start = message(new_id(), app.model_id, [], None, None, job.stats)
        h.send_event({"type": "message_start", "message": start}, event="message_start")
        h.send_event({"type": "ping"}, event="ping")
        for _, event in _chain(first, events):
            if event[0] == "piece":
                _send(h, blocks, reply.feed(event[1]))
        _send(h, blocks, reply.finish())
        for name, payload in blocks.close():
            h.send_event(payload, event=name)
        reason, sequence = stop_reason(job.stats, p.req.stop, bool(reply.calls))
        h.send_event({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                      "usage": usage(job.stats)}, event="message_delta")  # fmt: skip
        h.send_event({"type": "message_stop"}, event="message_stop")
    except api.ApiError as e:
        h.send_event(api.error_body(e, PATH), event="error")
    except api.CLIENT_GONE:
        job.cancelled.set()
    finally:
        events.close()


def _send(h, blocks: Blocks, deltas: list[dict]) -> None:
    for delta in deltas:
        for name, payload in blocks.add(delta):
            h.send_event(payload, event=name)


def _chain(first, rest):
    yield first
    yield from rest
