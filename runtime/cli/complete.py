"""``-p PROMPT``: one answer, printed as it is generated.

On a model with a chat template the prompt is a chat turn (with the baked system
prompt), the way ``ollama run MODEL PROMPT`` answers; ``--raw`` continues it as plain
text, as llama.cpp's ``llama-simple`` does (a model without a template always does).
"""

from __future__ import annotations

import sys

from ..errors import UsageError
from ..llama.job import Job


def grammar_from(json_schema: str | None, grammar_file: str | None) -> str | None:
    """The GBNF for ``--json-schema`` or ``--grammar`` (not both)."""
    if json_schema and grammar_file:
        raise UsageError("--json-schema and --grammar do not go together; give one")
    if json_schema:
        from ..llama.schema import json_grammar, load_schema

        return json_grammar(load_schema(json_schema))
    if grammar_file:
        try:
            with open(grammar_file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(
                f"--grammar: cannot read {grammar_file}: {getattr(e, 'strerror', None) or e}"
            ) from None
        if not text.strip():
            raise UsageError(f"--grammar: {grammar_file} is empty")
        return text
    return None


def complete(engine, formatter, sampling, prompt: str, *, raw: bool, system: str, max_tokens: int,
             grammar: str | None, timings: bool) -> int:  # fmt: skip
    if raw or formatter.plain:
        tokens, stop = engine.model.tokenize(prompt), []
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        rendered = formatter.render(messages)
        tokens, stop = engine.model.tokenize(rendered.text, add_special=rendered.add_special), rendered.stop
    job = Job("generate", tokens, stop=stop, sampling=sampling, max_tokens=max_tokens, grammar=grammar)
    for piece in engine.generate(job):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if timings:
        s = job.stats
        pp, tg = s.prompt_seconds, s.generation_seconds
        print(
            f"timings: prompt {s.prompt_tokens} tokens in {pp * 1e3:.1f} ms "
            f"({s.prompt_tokens / pp if pp else 0:.1f} t/s); generated "
            f"{s.completion_tokens} tokens in {tg * 1e3:.1f} ms "
            f"({s.completion_tokens / tg if tg else 0:.1f} t/s)",
            file=sys.stderr,
        )
    return 0
