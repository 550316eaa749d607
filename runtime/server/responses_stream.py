"""The Responses API's output: items built from a reply's chat deltas in the order the text
has them (reasoning, message, function calls), and the named events that stream them. A
whole response builds its items the same way with no events, so the two always agree."""

from __future__ import annotations

import itertools
import os

from . import api


def _silent(kind: str, **fields) -> None:
    pass


class Items:
    """Output items from ``Reply`` deltas. ``emit(type, **fields)`` sends each event."""

    def __init__(self, emit=_silent):
        self.emit = emit
        self.output: list[dict] = []
        self._open: dict | None = None  # the item being written: always the last of output
        self._calls: dict[int, dict] = {}  # the reply's tool call index -> its item

    def feed(self, deltas: list[dict]) -> None:
        for delta in deltas:
            if "reasoning_content" in delta:
                self._text("reasoning", delta["reasoning_content"])
            elif "content" in delta:
                self._text("message", delta["content"])
            else:
                for call in delta["tool_calls"]:
                    self._call(call)

    def close(self, status: str = "completed") -> None:
        """Finish the open item; ``status`` "incomplete" says the text was cut there."""
        item, self._open = self._open, None
        if item is None:
            return
        at = self._at(item)
        if item["type"] == "function_call":
            self.emit("response.function_call_arguments.done", **at, name=item["name"],
                      arguments=item["arguments"])  # fmt: skip
        else:
            part = item["content"][0]
            if item["type"] == "message":
                self.emit("response.output_text.done", **self._in(item), text=part["text"], logprobs=[])
            else:
                self.emit("response.reasoning_text.done", **self._in(item), text=part["text"])
            self.emit("response.content_part.done", **self._in(item), part=part)
        if item["type"] != "reasoning":
            item["status"] = status
        self.emit("response.output_item.done", output_index=at["output_index"], item=item)

    def _start(self, item: dict) -> dict:
        self.close()
        self.output.append(item)
        self._open = item
        shown = {**item, "content": []} if "content" in item else item  # its part comes next
        self.emit("response.output_item.added", output_index=len(self.output) - 1, item=shown)
        if "content" in item:
            self.emit("response.content_part.added", **self._in(item), part=item["content"][0])
        return item

    def _text(self, kind: str, text: str) -> None:
        item = self._open
        if item is None or item["type"] != kind:
            item = self._start(_message() if kind == "message" else _reasoning())
        item["content"][0]["text"] += text
        if kind == "message":
            self.emit("response.output_text.delta", **self._in(item), delta=text, logprobs=[])
        else:
            self.emit("response.reasoning_text.delta", **self._in(item), delta=text)

    def _call(self, call: dict) -> None:
        """A new call (it has an id and a name), or more of a call's arguments."""
        fn = call["function"]
        if "id" in call:
            self._calls[call["index"]] = self._start({
                "type": "function_call", "id": new_id("fc"), "call_id": call["id"], "name": fn["name"],
                "arguments": "", "status": "in_progress",
            })  # fmt: skip
        if fn.get("arguments"):
            item = self._calls[call["index"]]
            item["arguments"] += fn["arguments"]
            self.emit("response.function_call_arguments.delta", **self._at(item), delta=fn["arguments"])

    def _at(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self.output.index(item)}

    def _in(self, item: dict) -> dict:
        """Where an item's text goes: its one content part."""
        return {**self._at(item), "content_index": 0}


def _message() -> dict:
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    return {"type": "message", "id": new_id("msg"), "status": "in_progress", "role": "assistant",
            "content": [part]}  # fmt: skip


def _reasoning() -> dict:
    part = {"type": "reasoning_text", "text": ""}
    return {"type": "reasoning", "id": new_id("rs"), "summary": [], "content": [part]}


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


class Events:
    """Server-sent events named by their type, numbered in the order they go out."""

    def __init__(self, h):
        self.h, self.sequence = h, 0

    def __call__(self, kind: str, **fields) -> None:
        self.h.send_event({"type": kind, "sequence_number": self.sequence, **fields}, event=kind)
        self.sequence += 1


def stream(app, h, p, shell: dict, done) -> None:
    """Stream one response: created, in progress, the items' events, then completed (or
    incomplete). ``done(items, stats)`` makes the final response."""
    events = app.run(h, p.jobs)
    first = next(events)  # an error before any output still gets a proper status code
    h.start_events()
    emit, reply = Events(h), p.replies[0]
    items = Items(emit)
    try:
        emit("response.created", response=shell)
        emit("response.in_progress", response=shell)
        for _, event in itertools.chain([first], events):
            if event[0] == "piece":
                items.feed(reply.feed(event[1]))
        items.feed(reply.finish())
        final = done(items, p.jobs[0].stats)
        emit(f"response.{final['status']}", response=final)
    except api.ApiError as e:
        emit("error", code=e.code or e.type, message=e.message, param=e.param)
    except api.CLIENT_GONE:
        for job in p.jobs:
            job.cancelled.set()
    finally:
        events.close()
