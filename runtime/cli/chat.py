"""The terminal chat (``--cli``): a conversation turn by turn, replies streamed.

It goes through the same engine as the server (one slot), so the next turn
reuses the cached prefix of the conversation and only decodes what is new.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..llama.engine import Engine
from ..llama.job import Job, Sampling
from ..llama.templates import PLAIN_NOTE, Formatter


def run_cli(
    engine: Engine,
    formatter: Formatter,
    sampling: Sampling,
    *,
    max_tokens: int,
    system: str,
    title: str,
    greeting: str = "",
    grammar: str | None = None,
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
        reply = []
        try:
            prompt = formatter.render(messages)
            tokens = engine.model.tokenize(prompt.text, add_special=prompt.add_special)
            job = Job("generate", tokens, stop=prompt.stop, sampling=sampling, max_tokens=max_tokens,
                      grammar=grammar)  # fmt: skip
            for piece in engine.generate(job):
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            print("\n(stopped)", file=stderr)
        stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
