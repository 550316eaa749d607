"""Chat prompts and the terminal chat.

A model with a ``tokenizer.chat_template`` is formatted by llama-cpp-python's
own Jinja2 chat formatter. A model without one (a base or story model such as
stories260K) is chatted with in plain completion style: the conversation is one
running text that the model continues, and the user is told so once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from .engine import Sampling, Session, Stats

PLAIN_NOTE = (
    "note: this model has no chat template, so chat runs in plain completion style: "
    "the model continues the conversation as one text"
)


@dataclass
class Prompt:
    text: str
    add_special: bool  # whether tokenizing should add BOS etc.
    stop: list[str]


def named_formats() -> dict:
    """Chat formats llama-cpp-python registers by name ("chatml", "llama-3", ...), as
    {name: formatter}; handlers that are not plain formatters are left out."""
    from .backend import full_package

    full_package()
    from llama_cpp import llama_chat_format as lcf

    out = {}
    for name, handler in lcf.LlamaChatCompletionHandlerRegistry()._chat_handlers.items():
        code = getattr(handler, "__code__", None)
        if code is not None and "chat_formatter" in code.co_freevars:
            out[name] = handler.__closure__[code.co_freevars.index("chat_formatter")].cell_contents
    return out


class Formatter:
    """Renders messages with (in order) a baked template or format name, the model's
    own template, or the plain completion-style fallback."""

    def __init__(self, model, template: str | None = None):
        self.model = model
        self.template = template or model.chat_template()
        self._format = None

    @property
    def plain(self) -> bool:
        return not self.template

    def _formatter(self):
        if self._format is None:
            named = named_formats()
            if self.template in named:
                self._format = named[self.template]
            else:
                from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                C, vocab = self.model.C, self.model.vocab
                bos, eos = C.llama_vocab_bos(vocab), C.llama_vocab_eos(vocab)
                self._format = Jinja2ChatFormatter(
                    template=self.template,
                    bos_token=self.model.token_text(bos) if bos >= 0 else "",
                    eos_token=self.model.token_text(eos) if eos >= 0 else "",
                )
        return self._format

    def render(self, messages: list[dict]) -> Prompt:
        if self.plain:
            return Prompt(render_plain(messages), True, [])
        result = self._formatter()(messages=messages)
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return Prompt(result.prompt, not result.added_special, stop)


def render_plain(messages: list[dict]) -> str:
    """The conversation as one running text: a system prompt opens it, each user
    message starts a new line (after the first), and each reply continues it."""
    parts, started = [], False
    for m in messages:
        content = m.get("content") or ""
        if m["role"] == "system":
            if content:
                parts.append(content.rstrip() + "\n\n")
        elif m["role"] == "user":
            parts.append(("\n" if started else "") + content)
            started = True
        else:
            parts.append(content)
    return "".join(parts)


def generate_text(
    session: Session, tokens: list[int], stop: list[str], sampling: Sampling, max_tokens: int, stats: Stats
):
    """Stream the completion of ``tokens``, ending early at any of the ``stop`` strings
    (which are not part of the output)."""
    pieces = session.generate(tokens, sampling, max_tokens=max_tokens, stats=stats)
    if not stop:
        yield from pieces
        return
    held = ""
    longest = max(len(s) for s in stop)
    try:
        for piece in pieces:
            held += piece
            hits = [held.find(s) for s in stop if s in held]
            if hits:
                yield held[: min(hits)]
                stats.finish_reason = "stop"
                return
            if len(held) > longest:
                yield held[: len(held) - longest]
                held = held[len(held) - longest :]
        yield held
    finally:
        pieces.close()


def run_cli(
    session: Session,
    formatter: Formatter,
    sampling: Sampling,
    *,
    max_tokens: int,
    system: str,
    title: str,
    greeting: str = "",
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Interactive chat with streaming replies until /bye or end of input."""
    print(f"Chatting with {title}. Type /bye or press Ctrl-D to quit, /clear to start over.", file=stderr)
    if formatter.plain:
        print(PLAIN_NOTE, file=stderr)
    if greeting:
        print(greeting, file=stdout)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    interactive = stdin.isatty() and stdout.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            if interactive:
                line = input("> ") + "\n"
            else:
                stdout.write("> ")
                stdout.flush()
                line = stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            line = ""
        if not line:
            stdout.write("\n")
            return 0
        text = line.rstrip("\n")
        if text.strip() in ("/bye", "/exit", "/quit"):
            return 0
        if text.strip() == "/clear":
            messages = list(base)
            print("(conversation cleared)", file=stderr)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        reply, stats = [], Stats()
        try:
            prompt = formatter.render(messages)
            tokens = session.model.tokenize(prompt.text, add_special=prompt.add_special)
            for piece in generate_text(session, tokens, prompt.stop, sampling, max_tokens, stats):
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            print("\n(stopped)", file=stderr)
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
