"""One reply as the model writes it, turned into what OpenAI's chat API returns:
``reasoning_content`` (text between thinking markers), ``content``, and ``tool_calls``,
both as streamed deltas and as the final message."""

from __future__ import annotations

# Thinking markers of the common reasoning models: DeepSeek-R1, Qwen3 and QwQ; Cohere's
# Command A reasoning; Mistral's Magistral; and a spelled-out form some fine-tunes use.
THINKING = (("<think>", "</think>"), ("<|START_THINKING|>", "<|END_THINKING|>"),
            ("[THINK]", "[/THINK]"), ("<thinking>", "</thinking>"))  # fmt: skip


def open_marker(prompt: str) -> str | None:
    """The closing marker to wait for when the prompt itself opens the thinking (templates
    that end the generation prompt with "<think>\\n"), else None."""
    tail = prompt.rstrip()
    for start, end in THINKING:
        if tail.endswith(start):
            return end
    return None


class ThinkSplitter:
    """Splits streamed text into ("reasoning", text) and ("content", text). Thinking counts
    only at the start of a reply, as llama-server reads it."""

    def __init__(self, open_close: str | None = None):
        self.state = "reasoning" if open_close else "start"
        self.close = open_close or ""
        self.buf = ""
        self.trim = False  # drop the blank lines that follow the closing marker

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while self.buf:
            if self.state == "start":
                head = self.buf.lstrip()
                match = next(((s, e) for s, e in THINKING if head.startswith(s)), None)
                if match:
                    self.state, self.close, self.buf = "reasoning", match[1], head[len(match[0]) :]
                    continue
                if not head or any(s.startswith(head) for s, _ in THINKING):
                    break  # maybe the start of a marker: wait for more
                self.state = "content"
            elif self.state == "reasoning":
                i = self.buf.find(self.close)
                if i >= 0:
                    _add(out, "reasoning", self.buf[:i])
                    self.buf, self.state, self.trim = self.buf[i + len(self.close) :], "content", True
                    continue
                keep = _partial(self.buf, self.close)
                _add(out, "reasoning", self.buf[: len(self.buf) - keep])
                self.buf = self.buf[len(self.buf) - keep :]
                break
            else:
                if self.trim:
                    self.buf = self.buf.lstrip()
                    if not self.buf:
                        break
                    self.trim = False
                _add(out, "content", self.buf)
                self.buf = ""
        return out

    def finish(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        _add(out, "reasoning" if self.state == "reasoning" else "content", self.buf)
        self.buf = ""
        return out


def _add(out: list, kind: str, text: str) -> None:
    if text:
        out.append((kind, text))


def _partial(text: str, marker: str) -> int:
    """How many trailing characters of ``text`` could be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class Reply:
    """One choice of a chat completion: feed it text, get OpenAI deltas."""

    def __init__(self, *, split_reasoning: bool, open_close: str | None = None, tool_format=None):
        self.think = ThinkSplitter(open_close) if split_reasoning else None
        self.tools = None
        if tool_format is not None:
            from ..llama.toolcalls import StreamParser

            self.tools = StreamParser(tool_format)
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict] = []  # {"id", "name", "arguments"}

    def feed(self, text: str) -> list[dict]:
        parts = self.think.feed(text) if self.think else [("content", text)]
        return self._deltas(parts, final=False)

    def finish(self) -> list[dict]:
        parts = self.think.finish() if self.think else []
        return self._deltas(parts, final=True)

    def _deltas(self, parts, final: bool) -> list[dict]:
        out = []
        for kind, text in parts:
            if kind == "reasoning":
                self.reasoning.append(text)
                out.append({"reasoning_content": text})
            elif self.tools is None:
                self.content.append(text)
                out.append({"content": text})
            else:
                out += self._tool_events(self.tools.feed(text))
        if final and self.tools is not None:
            out += self._tool_events(self.tools.finish())
        return out

    def _tool_events(self, events) -> list[dict]:
        out = []
        for event in events:
            if event[0] == "content":
                self.content.append(event[1])
                out.append({"content": event[1]})
            elif event[0] == "call":
                _, index, call_id, name = event
                self.calls.append({"id": call_id, "name": name, "arguments": ""})
                fn = {"name": name, "arguments": ""}
                out.append(
                    {"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": fn}]}
                )
            else:
                _, index, delta = event
                self.calls[index]["arguments"] += delta
                out.append({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})
        return out

    def message(self) -> dict:
        msg: dict = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["content"] = msg["content"] or None
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in self.calls
            ]
        return msg
