"""Chat prompts (runtime/llama/templates.py) without a model: Jinja templates in jinja2's
sandbox, llama.cpp's named formats (libllama, no model), and the plain fallback."""

from __future__ import annotations

import functools
import os
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TOOLCHAIN
from runtime.errors import UsageError
from runtime.llama.templates import PLAIN_NOTE, Formatter, Prompt, named_formats, render_plain

CHATML = (
    "{{ bos_token }}{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "U2"},
]
CHATML_TEXT = (
    "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
    "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
)
TOKENS = {1: "<s>", 2: "<|im_end|>"}


class Model:
    """What Formatter reads of a model: its template, BOS/EOS and their text."""

    def __init__(self, template: str | None = None, *, bos: int = 1, eos: int = 2, C=None):
        self._template = template
        self.vocab = object()
        self.C = C or SimpleNamespace(
            llama_vocab_bos=lambda v: bos if v is self.vocab else None,
            llama_vocab_eos=lambda v: eos if v is self.vocab else None,
        )

    def chat_template(self) -> str | None:
        return self._template

    def token_text(self, token: int) -> str:
        return TOKENS[token]


def render(template: str, messages=CONVERSATION, **kw) -> Prompt:
    return Formatter(Model(template, **kw)).render(messages)


# -- Jinja templates ---------------------------------------------------------------
def test_a_chatml_template_renders_the_conversation_exactly():
    p = render(CHATML)
    assert p == Prompt("<s>" + CHATML_TEXT, False, ["<|im_end|>"])


def test_the_generation_prompt_is_asked_for():
    p = render("{% if add_generation_prompt %}GO{% else %}NO{% endif %}")
    assert p.text == "GO"


def test_a_model_without_bos_or_eos_gets_empty_tokens_and_no_stop():
    p = render("[{{ bos_token }}|{{ eos_token }}]", bos=-1, eos=-1)
    assert p == Prompt("[|]", False, [])


def test_a_baked_template_wins_over_the_model_s():
    f = Formatter(Model("MODEL"), "BAKED {{ messages | length }}")
    assert not f.plain and f.render(CONVERSATION).text == "BAKED 4"


def test_loop_controls_work():
    p = render(
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m.content }};{% endfor %}"
    )
    assert p.text == "S;U1;"


def test_tojson_keeps_non_ascii_and_takes_keywords():
    p = render(
        "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=1) }}", [{"role": "user", "content": "é"}]
    )
    assert p.text == '{"role": "user", "content": "é"}|{\n "role": "user",\n "content": "é"\n}'


def test_strftime_now_is_there():
    assert render("{{ strftime_now('%Y') }}").text.isdigit()


def test_raise_exception_is_a_usage_error_with_its_message():
    with pytest.raises(UsageError) as info:
        render("{% if messages[0].role == 'system' %}"
               "{{ raise_exception('System role not supported') }}{% endif %}")  # fmt: skip
    assert str(info.value) == "the chat template refused the conversation: System role not supported"


@pytest.mark.parametrize(
    "template, detail",
    [("{{ messages[0].content.missing() }}", "has no attribute 'missing'"),
     ("{{ messages.append(1) }}", "access to attribute 'append' of 'list' object is unsafe"),
     ("{{ 1 / 0 if False else undefined_thing + 1 }}", "'undefined_thing' is undefined")],
)  # fmt: skip
def test_a_template_that_fails_while_rendering_is_a_usage_error(template, detail):
    with pytest.raises(UsageError) as info:
        render(template)
    assert str(info.value).startswith("the chat template failed: ") and detail in str(info.value)
    assert "\n" not in str(info.value)


def test_a_template_with_a_syntax_error_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        render("{% for m in messages %}{{ m.content }}")
    assert "syntax error" in str(info.value) and "\n" not in str(info.value)


def test_transformers_generation_blocks_render_their_body():
    # Transformers marks the assistant's part with {% generation %} (LFM2.5, Laguna, ...);
    # llama.cpp's own Jinja engine renders the body as is, and so must we.
    p = render("{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}")
    assert p.text == "[S][U1][A1][U2]"


# -- the plain fallback ------------------------------------------------------------
def test_render_plain_is_one_running_text():
    assert render_plain(CONVERSATION) == "S\n\nU1A1\nU2"
    assert (
        render_plain([{"role": "system", "content": "  S  \n"}, {"role": "user", "content": "U"}])
        == "  S\n\nU"
    )
    assert render_plain([{"role": "system", "content": ""}, {"role": "user", "content": None}]) == ""
    assert render_plain([{"role": "assistant", "content": "A"}, {"role": "user", "content": "U"}]) == "AU"


def test_a_model_without_a_template_chats_in_plain_style():
    f = Formatter(Model(None))
    assert f.plain
    assert f.render(CONVERSATION) == Prompt("S\n\nU1A1\nU2", True, [])
    assert "plain completion style" in PLAIN_NOTE


# -- llama.cpp's named formats -----------------------------------------------------
@functools.cache
def C():
    from runtime.llama.backend import bindings

    return bindings()


def test_named_formats_include_llama_cpp_s_and_the_aliases():
    names = named_formats()
    assert {"chatml", "llama3", "mistral-v7", "llama-3", "qwen"} <= set(names)
    assert names == sorted(set(names)) and "{" not in "".join(names)


@pytest.mark.parametrize("name", ["chatml", "qwen"])
def test_a_named_format_renders_the_exact_text(name):
    p = Formatter(Model(None, C=C()), name).render(CONVERSATION)
    assert p == Prompt(CHATML_TEXT, True, [])


def test_llama3_by_name():
    p = Formatter(Model(None, C=C()), "llama3").render(CONVERSATION[1:2])
    assert p.text == (
        "<|start_header_id|>user<|end_header_id|>\n\nU1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_a_name_llama_cpp_does_not_know_is_a_usage_error():
    with pytest.raises(UsageError) as info:
        Formatter(Model(None, C=C()), "chatml2").render(CONVERSATION)
    assert "'chatml2'" in str(info.value) and "chatml" in str(info.value)


# -- the templates llama.cpp tests against -----------------------------------------
def _sdist() -> Path | None:
    marker = Path(sys.prefix) / "llama-cpp-python-sdist"
    candidates = [Path(marker.read_text().strip())] if marker.is_file() else []
    candidates.append(Path(TOOLCHAIN) / "sdist" / "llama_cpp_python-0.3.36.tar.gz")
    return next((p for p in candidates if p.is_file()), None)


@functools.cache
def shipped_templates() -> dict[str, str]:
    """llama.cpp's models/templates/*.jinja from the llama-cpp-python sdist ({} without it)."""
    sdist, found = _sdist(), {}
    if sdist is None:
        return found
    with tarfile.open(sdist) as tar:
        for member in tar:
            if "/models/templates/" not in member.name:
                if found:
                    break  # the folder is stored in one run: the rest of the archive need not be read
            elif member.name.endswith(".jinja"):
                found[os.path.basename(member.name)] = tar.extractfile(member).read().decode()
    return found


# Templates that refuse a plain system + user conversation, and why.
REFUSING = {
    "google-gemma-2-2b-it.jinja": "refused the conversation: System role not supported",
    "fireworks-ai-llama-3-firefunction-v2.jinja": "'functions' is undefined",  # needs tool definitions
}


@pytest.mark.parametrize("name", sorted(shipped_templates()) or [pytest.param("", marks=pytest.mark.skip(
    reason="the llama-cpp-python sdist (install.sh's toolchain cache) is not on this machine"))])  # fmt: skip
def test_llama_cpp_s_test_templates_render_a_conversation(name):
    said = ["Hi there", "Hello you", "Bye now"]
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": said[0]},
                {"role": "assistant", "content": said[1]}, {"role": "user", "content": said[2]}]  # fmt: skip
    model = Model(shipped_templates()[name])
    if name in REFUSING:
        with pytest.raises(UsageError) as info:
            Formatter(model).render(messages)
        assert REFUSING[name] in str(info.value) and "\n" not in str(info.value)
        return
    p = Formatter(model).render(messages)
    assert [p.text.count(x) for x in said] == [1, 1, 1]  # each turn once (generation blocks too)
    assert p.text.index(said[0]) < p.text.index(said[1]) < p.text.index(said[2])
    assert p.stop == ["<|im_end|>"] and not p.add_special


def test_the_build_time_check_accepts_what_the_runtime_renders(tmp_path):
    """`llamabundle build --chat-template FILE` checks with the runtime's own renderer: a
    template using {% break %} (loop controls, as Cohere's and Kimi's do) builds."""
    from bundler.config import chat_template
    from bundler.errors import InputError

    loop = "{% for m in messages %}{{ m['content'] }}{% if loop.first %}{% break %}{% endif %}{% endfor %}"
    (tmp_path / "t.jinja").write_text(loop)
    assert chat_template(str(tmp_path / "t.jinja"), "--chat-template") == loop
    with pytest.raises(InputError, match=r"^--chat-template: the chat template has a Jinja syntax error"):
        chat_template("{% for m in messages %}", "--chat-template")


def test_llama_3_templates_get_today_s_date_as_llama_cpp_gives_it():
    """Llama 3.x templates write "Today Date:" from date_string (a fixed 26 Jul 2024 without
    it); llama.cpp passes today's date, and so does this renderer, unless a request says."""
    import datetime

    template = shipped_templates()["meta-llama-Llama-3.1-8B-Instruct.jinja"]
    messages = [{"role": "user", "content": "Hi"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    p = Formatter(Model(template)).render(messages, tools=tools)
    assert f"Today Date: {datetime.datetime.now().strftime('%d %b %Y')}" in p.text
    p = Formatter(Model(template)).render(messages, tools=tools, extra={"date_string": "01 Jan 2030"})
    assert "Today Date: 01 Jan 2030" in p.text
