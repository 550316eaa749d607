"""JSON schemas as llama.cpp grammars: structured output is constrained while it is
generated, so it always parses and matches the schema.

The conversion is llama-cpp-python's own (``llama_grammar.SchemaConverter``, a port of
llama.cpp's json-schema-to-grammar), imported without the package ``__init__`` (numpy).
"""

from __future__ import annotations

import json

from ..errors import UsageError
from .backend import bindings


def json_grammar(schema: dict | None = None) -> str:
    """GBNF (root rule ``root``) for JSON text that matches ``schema``; None: any JSON object.
    A schema the converter cannot follow is a UsageError that says why."""
    bindings()  # the bare llama_cpp package, so the submodule imports without numpy
    from llama_cpp import llama_grammar

    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise UsageError("a JSON schema must be a JSON object")
    conv = llama_grammar.SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = conv.resolve_refs(json.loads(json.dumps(schema)), "schema")
        conv.visit(resolved, "")
        return conv.format_grammar()
    except RecursionError:
        raise UsageError("the JSON schema is too deeply nested") from None
    except Exception as e:  # the converter asserts on what it does not know
        detail = str(e).replace("stdin", "schema") or type(e).__name__
        raise UsageError(f"the JSON schema cannot be used: {detail}") from None


def load_schema(text: str) -> dict:
    """A schema given as JSON text or as the path of a file holding it (``--json-schema``)."""
    source = text
    if not text.lstrip().startswith("{"):
        try:
            with open(text, encoding="utf-8") as f:
                source = f.read()
        except OSError as e:
            raise UsageError(f"--json-schema: cannot read {text}: {e.strerror}") from None
    try:
        schema = json.loads(source)
    except ValueError as e:
        raise UsageError(f"--json-schema: not valid JSON: {e}") from None
    return schema
