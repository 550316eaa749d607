"""A request's ``tools`` checked (``validate_tools``) and turned into a GBNF grammar
(``tool_choice_grammar``): each call's name one of the tools' names and its arguments
valid against that tool's ``parameters`` JSON schema.

The JSON-schema part is llama-cpp-python's ``SchemaConverter`` (pure Python,
imported without the package ``__init__`` and its numpy); this module adds the
call syntax of each family around it (``toolcalls.ToolFormat.grammar``) and the
trigger patterns that switch a lazy grammar on (``trigger_patterns``).

All tools share one converter, so the JSON primitives (``string``, ``value``, ...)
are defined once; every rule of a tool is named after the tool (``get-weather-args``,
``get-weather-args-city``, ...), and the converter renames a clashing rule rather
than overwrite it. ``$ref``s are named after the tool too (``get-weather-ref-defs-Unit``),
so two tools that both define ``$defs/Item`` keep two rules.
"""

from __future__ import annotations

import copy
import json
import re

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
RULE_CHARS = re.compile(r"[^a-zA-Z0-9-]+")
# what llama.cpp's own trigger words escape: the trigger patterns are std::regex (ECMAScript)
REGEX_SPECIAL = re.compile(r"[.^$|()*+?\[\]{}\\]")
WS = "tc-ws"  # the whitespace allowed between tags and around a call


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + out.replace("\t", "\\t") + '"'


def _converter_class():
    from .backend import bindings

    bindings()  # sets up the llama_cpp package without its __init__ (and numpy)
    from llama_cpp import llama_grammar

    class Converter(llama_grammar.SchemaConverter):
        prefix = "tool"

        def _resolve_ref(self, ref):
            # the stock converter names a $ref's rule after its last path part alone, so
            # two tools' "#/$defs/Item" would share one rule
            name = RULE_CHARS.sub("-", f"{self.prefix}-ref-{ref.split('#', 1)[-1]}").replace("--", "-")
            if name not in self._rules and ref not in self._refs_being_resolved:
                self._refs_being_resolved.add(ref)
                name = self.visit(self._refs[ref], name)
                self._refs_being_resolved.remove(ref)
            return name

    return Converter


class Rules:
    """A grammar being built: the converter's rules plus the call syntax around them."""

    def __init__(self):
        self.conv = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self.add(WS, "[ \\t\\n]{0,2}")

    def add(self, name: str, body: str) -> str:
        """Add a rule; returns its name (renamed if another rule already has the name)."""
        return self.conv._add_rule(name, body)

    def arguments(self, index: int, tool: dict) -> str:
        """The rule for one tool's arguments object; ValueError names the tool when the
        converter cannot handle its schema."""
        fn = tool["function"]
        schema = copy.deepcopy(fn.get("parameters") or {"type": "object", "properties": {}})
        self.conv.prefix = RULE_CHARS.sub("-", fn["name"]).strip("-") or f"tool{index}"
        try:
            schema = self.conv.resolve_refs(schema, f"tools/{index}")
            return self.conv.visit(schema, f"{self.conv.prefix}-args")
        except Exception as e:  # AssertionError, KeyError, ValueError, re.error, ... from the converter
            why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ValueError(f"tools[{index}].function.parameters (tool {fn['name']!r}) cannot be "
                             f"turned into a grammar: {why}") from None  # fmt: skip

    def text(self, root: str) -> str:
        self.conv._rules["root"] = root
        return self.conv.format_grammar() + "\n"


def build(tools: list[dict], indexes: list[int], *, name_key: str, open_: str, separator: str | None,
          close: str, with_id: bool = False) -> str:  # fmt: skip
    """A grammar whose root is ``open_`` then one call, or several joined by ``separator``
    (when it is not None), then ``close``; each call is
    ``{"name": "<tool>", "<name_key>": <arguments>}`` (plus ``"id": "<9 letters or digits>"``
    with ``with_id``, as Mistral's templates require).
    ``open_``, ``separator`` and ``close`` are GBNF fragments; ``indexes`` are the tools'
    positions in the request, for error messages."""
    rules = Rules()
    id_rule = rules.add("tc-id", '"\\"" [a-zA-Z0-9]{9} "\\"" space') if with_id else None
    alts = []
    for index, tool in zip(indexes, tools, strict=True):
        args = rules.arguments(index, tool)
        name = tool["function"]["name"]
        body = (f'"{{" space {literal(json.dumps("name"))} space ":" space {literal(json.dumps(name))} space '
                f'"," space {literal(json.dumps(name_key))} space ":" space {args}')  # fmt: skip
        if id_rule:
            body += f' "," space {literal(json.dumps("id"))} space ":" space {id_rule}'
        alts.append(rules.add(f"{rules.conv.prefix}-call", body + ' "}" space'))
    call = rules.add("tc-call", " | ".join(alts))
    calls = call if separator is None else f"{call} ({separator} {call})*"
    return rules.text(" ".join(part for part in (open_, calls, close) if part))


def word_pattern(words: list[str]) -> str:
    """A lazy-grammar trigger pattern for words anywhere in the output, written as
    llama.cpp writes its own trigger words: the grammar is fed from the word on."""
    return "[\\s\\S]*?(" + "|".join(REGEX_SPECIAL.sub(r"\\\g<0>", w) for w in words) + ")[\\s\\S]*"


def start_pattern(regex: str) -> str:
    """A trigger pattern for text that starts the output (after whitespace); ``regex``
    (ECMAScript syntax) is the part the grammar is fed from."""
    return f"^\\s*({regex})[\\s\\S]*$"


def validate_tools(tools) -> list[dict]:
    """The request's ``tools``, checked; ValueError says what is wrong in one line."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ValueError("tools must be a list")
    seen: dict[str, int] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{where} must be an object")
        if "type" not in tool:
            raise ValueError(f"{where}.type is missing")
        if tool["type"] != "function":
            raise ValueError(f'{where}.type must be "function"')
        fn = tool.get("function")
        if fn is None:
            raise ValueError(f"{where}.function is missing")
        if not isinstance(fn, dict):
            raise ValueError(f"{where}.function must be an object")
        name = fn.get("name")
        if name is None:
            raise ValueError(f"{where}.function.name is missing")
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"{where}.function.name must be 1 to 64 letters, digits, underscores or dashes")
        if name in seen:
            raise ValueError(f"{where}.function.name {name!r} is also the name of tools[{seen[name]}]")
        seen[name] = i
        if fn.get("description") is not None and not isinstance(fn["description"], str):
            raise ValueError(f"{where}.function.description must be a string")
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise ValueError(f"{where}.function.parameters must be a JSON schema (an object)")
            if params.get("type", "object") != "object":
                raise ValueError(f'{where}.function.parameters must be a JSON schema of "type": "object"')
    return tools


BAD_CHOICE = 'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": X}}'


def tool_choice_grammar(fmt, tools, tool_choice, parallel: bool) -> tuple[str | None, bool]:
    """(GBNF or None, lazy) for a request's ``tools`` and ``tool_choice``, in the syntax of
    ``fmt`` (a ``toolcalls.ToolFormat``): "none" needs no grammar, "auto" (the default) a
    lazy one (applied once ``fmt.trigger_patterns()`` match), "required" and a named
    function one that applies from the first token. ValueError for bad tools or a bad
    tool_choice, or a schema the converter cannot handle."""
    tools = validate_tools(tools)
    choice, only = tool_choice if tool_choice is not None else "auto", None
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(BAD_CHOICE)
        only = fn["name"]
        if all(t["function"]["name"] != only for t in tools):
            raise ValueError(f"tool_choice.function.name {only!r} is not one of the tools")
    elif choice not in ("none", "auto", "required"):
        raise ValueError(BAD_CHOICE)
    if choice == "none" or (choice == "auto" and not tools):
        return None, False
    if not tools:
        raise ValueError('tool_choice "required" needs tools')
    return fmt.grammar(tools, parallel=bool(parallel), only=only), choice == "auto"
