"""Chat prompts: a conversation rendered as the text the model expects.

A chat template is rendered by one of two well-kept engines, neither of which
needs numpy (llama-cpp-python's ``llama_chat_format`` imports it, and numpy with
its OpenBLAS would be a third of the executable):

- a Jinja template (the model's ``tokenizer.chat_template`` or a baked one) by
  jinja2's sandbox, set up the way Hugging Face Transformers renders chat
  templates (and llama-cpp-python's ``Jinja2ChatFormatter`` copies);
- a format name baked at build time (``chatml``, ``llama3``, ``mistral-v7``, ...)
  by llama.cpp's own ``llama_chat_apply_template``.

A model without a template (a base or story model such as stories260K) is
chatted with in plain completion style: the conversation is one running text
that the model continues, and the user is told so once.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from datetime import datetime

from ..errors import UsageError

PLAIN_NOTE = (
    "note: this model has no chat template, so chat runs in plain completion style: "
    "the model continues the conversation as one text"
)
# llama-cpp-python's names for formats llama.cpp knows under another name
FORMAT_ALIASES = {"llama-2": "llama2", "llama-3": "llama3", "mistral-instruct": "mistral-v1",
                  "qwen": "chatml"}  # fmt: skip


@dataclass
class Prompt:
    text: str
    add_special: bool  # whether tokenizing should add BOS etc.
    stop: list[str]


def named_formats() -> list[str]:
    """The chat format names llama.cpp knows ("chatml", "llama3", ...), plus aliases."""
    from .backend import bindings  # not at the top: the bundler's config check imports this module

    C = bindings()
    n = C.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    C.llama_chat_builtin_templates(names, n)
    return sorted({name.decode() for name in names} | set(FORMAT_ALIASES))


class Formatter:
    """Renders messages with (in order) a baked template or format name, the model's
    own template, or the plain completion-style fallback."""

    def __init__(self, model, template: str | None = None):
        self.model = model
        self.template = template or model.chat_template()
        self._render = None

    @property
    def plain(self) -> bool:
        return not self.template

    def _renderer(self):
        if self._render is None:
            name = FORMAT_ALIASES.get(self.template, self.template)
            if "{" not in name:  # no Jinja in it: a format name, or a mistake (a typo, a path)
                if name not in named_formats():
                    raise UsageError(f"the chat template {name!r} is neither a Jinja template nor a chat "
                                     f"format llama.cpp knows ({', '.join(named_formats())})")  # fmt: skip
                self._render = _NamedFormat(self.model.C, name)
            else:
                C, vocab = self.model.C, self.model.vocab
                bos, eos = C.llama_vocab_bos(vocab), C.llama_vocab_eos(vocab)
                self._render = _JinjaTemplate(self.template,
                                              bos=self.model.token_text(bos) if bos >= 0 else "",
                                              eos=self.model.token_text(eos) if eos >= 0 else "")  # fmt: skip
        return self._render

    def render(self, messages: list[dict], *, tools: list | None = None, extra: dict | None = None) -> Prompt:
        """The prompt for ``messages``, ending where the assistant's answer starts. ``tools``
        and ``extra`` (a request's ``chat_template_kwargs``) go to a Jinja template."""
        if self.plain:
            return Prompt(render_plain(messages), True, [])
        render = self._renderer()
        if isinstance(render, _JinjaTemplate):
            return render(messages, tools=tools, extra=extra)
        return render(messages)


class _NamedFormat:
    """A format llama.cpp knows by name; the tokenizer adds BOS where the model wants it."""

    def __init__(self, C, name: str):
        self.C, self.name = C, name.encode()

    def __call__(self, messages: list[dict]) -> Prompt:
        C = self.C
        keep = [(m["role"].encode(), (m.get("content") or "").encode()) for m in messages]
        arr = (C.llama_chat_message * len(keep))(*(C.llama_chat_message(r, c) for r, c in keep))
        size = 1024 + 2 * sum(len(c) for _, c in keep)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = C.llama_chat_apply_template(self.name, arr, len(keep), True, buf, size)
            if n < 0:
                raise UsageError(f"llama.cpp cannot apply chat format {self.name.decode()!r}")
            if n <= size:
                return Prompt(buf.raw[:n].decode("utf-8", "replace"), True, [])
            size = n
        raise UsageError("the chat prompt did not fit its buffer")


def compile_template(source: str):
    """A Jinja chat template compiled in jinja2's immutable sandbox, with the extensions,
    globals and filters Transformers gives chat templates; a syntax error is a UsageError.
    The bundler checks a template at build time with this same function, so a template
    that builds is one that renders."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """Transformers' ``{% generation %}...{% endgeneration %}`` (it marks the assistant's
        part for training): rendered as its body, as Transformers and llama.cpp do."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, Generation])  # fmt: skip
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise, strftime_now=lambda f: datetime.now().strftime(f))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise UsageError(f"the chat template has a Jinja syntax error on line {e.lineno}: "
                         f"{e.message}") from None  # fmt: skip


class _JinjaTemplate:
    """A Jinja chat template (``compile_template``); BOS comes from the template."""

    def __init__(self, source: str, *, bos: str, eos: str):
        self.template, self.bos, self.eos = compile_template(source), bos, eos

    def __call__(
        self, messages: list[dict], *, tools: list | None = None, extra: dict | None = None
    ) -> Prompt:
        import jinja2

        # llama.cpp gives templates today's date (Llama 3.x's write it into the system turn,
        # and fall back to a fixed 2024 date without it); a request's kwargs may override it.
        today = datetime.now().strftime("%d %b %Y")
        variables = {"date_string": today, **(extra or {}), "messages": messages, "bos_token": self.bos,
                     "eos_token": self.eos, "add_generation_prompt": True}  # fmt: skip
        if tools:
            variables["tools"] = tools
        try:
            text = self.template.render(**variables)
        except jinja2.TemplateError as e:
            raise UsageError(f"the chat template failed: {e}") from None
        return Prompt(text, False, [self.eos] if self.eos else [])


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    raise UsageError(f"the chat template refused the conversation: {message}")


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
