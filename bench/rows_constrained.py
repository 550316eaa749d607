"""Row 7: constrained generation. Generation tokens/s with a JSON schema against the same
request without one, and against llama-server answering the same schema, in the same turns.

Both servers run side by side with one slot each (as row 1's HTTP figures). Each turn
sends four requests, all greedy with the same ``max_tokens``: ours and llama-server with
the schema, ours and llama-server without it (the order reversed every other turn). The
figures are each server's own ``timings.predicted_per_second``, as row 1's. The schema
asks for an object whose array of strings has more items than ``max_tokens`` could hold,
so neither side may finish early; the end-of-generation tokens get a logit bias of -100
in every request (with the schema and without), so the request without one runs to
``max_tokens`` too. Every reply's ``usage.completion_tokens`` and ``timings.predicted_n``
are recorded and compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import servers
from harness import Bench, Model, log
from measure import Stat
from prompts import Tokenizer
from report import Row

CHAT_PROMPT = 'Write a JSON object whose "items" array lists {n} different animals, one short name each.'
COMPLETION_PROMPT = "Here is a long list of names, as a JSON object:"
WHO = ("ours", "llama-server")


def schema(n_items: int) -> dict:
    """An object with one array of at least ``n_items`` strings: a grammar that runs a
    ``max_tokens`` of under n_items / 2 to its end (no token closes two items)."""
    return {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"},
            "minItems": n_items}}, "required": ["items"]}  # fmt: skip


def eog_ids(model: Path) -> list[int]:
    """Every end-of-generation token of the model's vocabulary (EOS, EOT, <|im_end|>, ...)."""
    tok = Tokenizer(model)
    C, vocab = tok.C, tok.vocab
    return [t for t in range(C.llama_vocab_n_tokens(vocab)) if C.llama_vocab_is_eog(vocab, t)]


def request(chat: bool, n: int, bias: dict, sch: dict | None) -> tuple[str, dict]:
    """The path and body of one request; ``sch`` None: the same request without a schema.
    Chat: OpenAI's response_format; completions: the json_schema field (both servers take both)."""
    body: dict = {"max_tokens": n, "temperature": 0, "cache_prompt": False, "logit_bias": bias}
    if chat:
        body["messages"] = [{"role": "user", "content": CHAT_PROMPT.format(n=2 * n)}]
        if sch is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "items", "schema": sch}}
        return "/v1/chat/completions", body
    body["prompt"] = COMPLETION_PROMPT
    if sch is not None:
        body["json_schema"] = sch
    return "/v1/completions", body


def _shown(path: str, body: dict) -> str:
    body = dict(body)
    if "response_format" in body:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "items", "schema": "$SCHEMA"}}  # fmt: skip
    if "json_schema" in body:
        body["json_schema"] = "$SCHEMA"
    return f"POST {path} " + json.dumps(body).replace('"$SCHEMA"', "$SCHEMA")


def constrained(b: Bench, model: Model, chat: bool) -> list[Row]:
    N = b.n_gen
    api = "chat" if chat else "completions"
    b.begin(f"row 7: constrained generation, {model.label} (/v1/{api.replace('chat', 'chat/completions')})")
    sch = schema(2 * N)
    bias = {str(t): -100 for t in eog_ids(model.path)}
    reqs = {True: request(chat, N, bias, sch), False: request(chat, N, bias, None)}
    ports = servers.free_port(), servers.free_port()
    ours_cmd = servers.ours_cmd(model.bundle, ports[0], b.threads, b.ctx, 1 if b.parallel else None)
    ref_cmd = servers.ref_cmd(b.tool("llama-server"), model.path, ports[1], b.threads, b.ctx, 1)
    keys = [(who, s) for s in (True, False) for who in WHO]
    tps: dict = {k: [] for k in keys}
    counts: dict = {k: set() for k in keys}  # (usage.completion_tokens, timings.predicted_n)
    cover: dict = {k: [] for k in keys}
    same = {True: 0, False: 0}
    first_text: dict = {}
    with servers.Server(ours_cmd, ports[0], b.work / "ours-server.log") as ours, \
         servers.Server(ref_cmd, ports[1], b.work / "llama-server.log") as ref:  # fmt: skip
        url = {"ours": ours.url, "llama-server": ref.url}
        for i in b.turns():
            order = keys if i % 2 else keys[::-1]
            replies = {(who, s): servers.post(url[who], *reqs[s]) for who, s in order}
            if not b.keep(i):
                continue
            for k, r in replies.items():
                t = r.timings or {}
                if not t.get("predicted_per_second") or "predicted_n" not in t:
                    raise RuntimeError(f"{k[0]}: no timings.predicted_per_second in the reply")
                tps[k].append(t["predicted_per_second"])
                counts[k].add((r.completion_tokens, t["predicted_n"]))
                cover[k].append(t["predicted_ms"] / 1e3 / r.seconds)
                first_text.setdefault(k, r.text)
            for s in (True, False):
                same[s] += replies[("ours", s)].text == replies[("llama-server", s)].text
            log(f"  run {i}/{b.runs}: with schema {tps[('ours', True)][-1]:.1f} vs "
                f"{tps[('llama-server', True)][-1]:.1f} t/s, without {tps[('ours', False)][-1]:.1f} vs "
                f"{tps[('llama-server', False)][-1]:.1f} t/s")  # fmt: skip
    notes = [b.end(), *_notes(model.label, N, tps, counts, cover, same, first_text, b.runs)]
    if not chat:
        notes.append(f'the prompt is "{COMPLETION_PROMPT}"')
    notes.append(f"$SCHEMA is {json.dumps(sch)}; end-of-generation tokens biased -100: "
                 f"{sorted(map(int, bias))}")  # fmt: skip
    cmds = [b.show(ours_cmd), b.show(ref_cmd), _shown(*reqs[True]), _shown(*reqs[False])]
    st = {k: Stat(v) for k, v in tps.items()}
    what = f"{N} tokens, {model.label}"
    return [
        Row(7, f"generation with a JSON schema / without (reference column: ours without), {what}", "tok/s",
            st[("ours", True)], st[("ours", False)], ("≥ 0.90x", "ratio>=", 0.90), cmds, notes),
        Row(7, f"generation with a JSON schema, ours / llama-server, {what}", "tok/s", st[("ours", True)],
            st[("llama-server", True)], ("≥ 1.00x", "ratio>=", 1.00), cmds, notes),
        Row(7, f"generation without a schema, ours / llama-server, {what}", "tok/s", st[("ours", False)],
            st[("llama-server", False)], None, cmds, notes),
    ]  # fmt: skip


def _notes(label, N, tps, counts, cover, same, first_text, runs) -> list[str]:
    """The row's checks, each naming the model (the report shows a note once per row number)."""

    def name(k):
        return f"{k[0]} {'with' if k[1] else 'without'} the schema"

    shown = ", ".join(f"{name(k)} {sorted(v)}" for k, v in counts.items())
    tokens = {c for v in counts.values() for c in v}
    alike = "the same in every reply" if len(tokens) == 1 else "**not the same in every reply**"
    notes = [f"{label}: tokens generated, (usage.completion_tokens, timings.predicted_n): {shown}; {alike}"]
    if min(c for v in counts.values() for c, _ in v) < N:
        notes.append(f"a reply stopped at EOS (or a grammar's end) before {N} tokens")
    ref = Stat(tps[("llama-server", True)]).median / Stat(tps[("llama-server", False)]).median
    notes.append(f"{label}: llama-server with the schema / without: {ref:.2f}x")
    notes.append(f"{label}: ours and llama-server wrote the same text in {same[True]} of {runs} runs with "
                 f"the schema, {same[False]} of {runs} without")  # fmt: skip
    med = {k: sorted(v)[len(v) // 2] for k, v in cover.items()}
    shares = ", ".join(f"{m:.0%} ({name(k)})" for k, m in med.items())
    notes.append(f"predicted_ms is {shares} of the client's wall time for the request (the rest: the "
                 "prompt, the grammar's set-up, HTTP)")  # fmt: skip
    notes.append(f"with the schema, ours' text begins {first_text[('ours', True)][:48]!r}, llama-server's "
                 f"{first_text[('llama-server', True)][:48]!r}; without, ours' begins "
                 f"{first_text[('ours', False)][:48]!r}")  # fmt: skip
    return notes
