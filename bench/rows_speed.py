"""Rows 1 and 3: tokens/s through `-p` and over HTTP, one client and several.

Ours and the reference take turns, run by run, so that a burst of load from
elsewhere falls on both; the first turn of each is a warm-up and is dropped.
"""

from __future__ import annotations

import json
import re

import servers
from harness import Bench, Model, log
from measure import Stat, run, tree_peak_rss
from report import Row

TIMINGS = re.compile(r"prompt (\d+) tokens in [\d.]+ ms \(([\d.]+) t/s\); "
                     r"generated (\d+) tokens in [\d.]+ ms \(([\d.]+) t/s\)")  # fmt: skip


def _llama_bench(b: Bench, model: Model, extra: list[str]) -> tuple[list[str], float]:
    cmd = [str(b.tool("llama-bench")), "-m", str(model.path), *extra, "-t", str(b.threads), "-r", "1",
           "-o", "json"]  # fmt: skip
    data = json.loads(run(cmd).stdout)
    return cmd, float(data[0]["avg_ts"])


def cli_speed(b: Bench, model: Model) -> list[Row]:
    """Ours: `-p PROMPT -n N --timings` (pp of the prompt at depth 0, then tg at depth P).
    Reference: llama-bench pp P at depth 0 and tg N at depth P, one repetition per turn."""
    P, N = b.n_prompt, b.n_gen
    b.begin(f"row 1: -p speed, {model.label} ({P}-token prompt, {N} tokens)")
    prompts = b.prompts(model)
    pp, tg, rpp, rtg, eos, cmds = [], [], [], [], 0, []
    for i in b.turns():
        prompt = b.placeholder(prompts.new(P), f'"$PROMPT_{P}"')
        ours = [str(model.bundle), "-p", prompt, "-n", str(N), "--temp", "0", "--timings",
                "-t", str(b.threads), "-c", str(b.ctx)]  # fmt: skip
        m = TIMINGS.search(tree_peak_rss(ours).stderr)
        if not m:
            raise RuntimeError(f"no timings line from {model.bundle.name} -p --timings")
        n_prompt, n_gen = int(m.group(1)), int(m.group(3))
        if n_prompt != P:
            raise RuntimeError(f"the prompt was {n_prompt} tokens for ours, not {P}")
        c1, r_pp = _llama_bench(b, model, ["-p", str(P), "-n", "0"])
        c2, r_tg = _llama_bench(b, model, ["-p", "0", "-n", str(N), "-d", str(P)])
        cmds = [b.show(ours), b.show(c1), b.show(c2)]
        if not b.keep(i):
            continue
        eos += n_gen < N
        pp.append(float(m.group(2)))
        tg.append(float(m.group(4)))
        rpp.append(r_pp)
        rtg.append(r_tg)
        log(f"  run {i}/{b.runs}: pp {pp[-1]:.1f} vs {r_pp:.1f} t/s, tg {tg[-1]:.1f} vs {r_tg:.1f} t/s")
    note = b.end()
    notes = [note] + ([f"ours stopped at EOS before {N} tokens in {eos} of {b.runs} runs"] if eos else [])
    t95 = ("≥ 0.95x", "ratio>=", 0.95)
    return [
        Row(1, f"prompt processing, `-p`, {model.label}, {P}-token prompt", "tok/s", Stat(pp), Stat(rpp), t95,
            cmds[:2], notes),
        Row(1, f"generation, `-p`, {model.label}, {N} tokens after the prompt", "tok/s", Stat(tg), Stat(rtg),
            t95, [cmds[0], cmds[2]], notes),
    ]  # fmt: skip


def _check(reply: servers.Reply, who: str, P: int, seen: dict) -> tuple[float, float]:
    """The server's own figures, after checking that its whole prompt was processed."""
    if reply.prompt_tokens != P:
        raise RuntimeError(f"{who}: the prompt was {reply.prompt_tokens} tokens, not {P}")
    t = reply.timings
    if not t or not t.get("prompt_per_second") or not t.get("predicted_per_second"):
        raise RuntimeError(f"{who}: no timings in the /v1/completions response")
    if t["prompt_n"] < P - 1:  # BOS may come from the cache; anything more would be a cache hit
        raise RuntimeError(f"{who}: only {t['prompt_n']} of {P} prompt tokens were processed (cache hit)")
    seen.setdefault("prompt_n", set()).add(t["prompt_n"])
    seen.setdefault("completion", set()).add(reply.completion_tokens)
    seen.setdefault("cover", []).append((t["prompt_ms"] + t["predicted_ms"]) / 1e3 / reply.seconds)
    return t["prompt_per_second"], t["predicted_per_second"]


def _seen_note(who: str, seen: dict, N: int) -> list[str]:
    cover = sorted(seen["cover"])[len(seen["cover"]) // 2]
    notes = [f"{who}: timings.prompt_n {sorted(seen['prompt_n'])}, completion tokens "
             f"{sorted(seen['completion'])}; prompt_ms + predicted_ms are {cover:.0%} of the client's "
             "wall time for the request"]  # fmt: skip
    if min(seen["completion"]) < N:
        notes.append(f"{who} stopped at EOS before {N} tokens at least once")
    return notes


def http_speed(b: Bench, model: Model) -> list[Row]:
    """One client, non-streaming /v1/completions, a new P-token prompt each turn (the
    same text to both servers, each sees it once); figures from each server's timings."""
    P, N = b.n_prompt, b.n_gen
    b.begin(f"row 1: HTTP speed, {model.label}")
    prompts = b.prompts(model)
    ports = servers.free_port(), servers.free_port()
    ours_cmd = servers.ours_cmd(model.bundle, ports[0], b.threads, b.ctx, 1 if b.parallel else None)
    ref_cmd = servers.ref_cmd(b.tool("llama-server"), model.path, ports[1], b.threads, b.ctx, 1)
    got = {"ours": ([], []), "llama-server": ([], [])}
    seen: dict = {"ours": {}, "llama-server": {}}
    with servers.Server(ours_cmd, ports[0], b.work / "ours-server.log") as ours, \
         servers.Server(ref_cmd, ports[1], b.work / "llama-server.log") as ref:  # fmt: skip
        for i in b.turns():
            prompt = prompts.new(P)
            replies = {who: servers.complete(srv.url, prompt, N) for who, srv in
                       (("ours", ours), ("llama-server", ref))}  # fmt: skip
            if b.keep(i):
                for who, reply in replies.items():
                    pp, tg = _check(reply, who, P, seen[who])
                    got[who][0].append(pp)
                    got[who][1].append(tg)
                log(
                    f"  run {i}/{b.runs}: pp {got['ours'][0][-1]:.1f} vs {got['llama-server'][0][-1]:.1f}, "
                    f"tg {got['ours'][1][-1]:.1f} vs {got['llama-server'][1][-1]:.1f} t/s"
                )
    body = f'{{"prompt": "$PROMPT_{P}", "max_tokens": {N}, "temperature": 0, "cache_prompt": false}}'
    cmds = [b.show(ours_cmd), b.show(ref_cmd), f"POST /v1/completions {body}"]
    notes_l = [b.end(), *_seen_note("ours", seen["ours"], N)]
    notes_l += _seen_note("llama-server", seen["llama-server"], N)
    t95 = ("≥ 0.95x", "ratio>=", 0.95)
    return [
        Row(1, f"prompt processing, HTTP, {model.label}, {P}-token prompt", "tok/s", Stat(got["ours"][0]),
            Stat(got["llama-server"][0]), t95, cmds, notes_l),
        Row(1, f"generation, HTTP, {model.label}, {N} tokens after the prompt", "tok/s",
            Stat(got["ours"][1]), Stat(got["llama-server"][1]), t95, cmds, notes_l),
    ]  # fmt: skip


def concurrency(b: Bench, model: Model, clients: int) -> Row:
    """`clients` clients at once, each a new short prompt and N tokens at temperature 0;
    aggregate tokens/s = all completion tokens / wall time from first send to last reply."""
    N = b.n_gen
    b.begin(f"row 3: {clients} concurrent clients, {model.label}")
    prompts = b.prompts(model)
    ports = servers.free_port(), servers.free_port()
    ours_cmd = servers.ours_cmd(model.bundle, ports[0], b.threads, b.ctx, clients if b.parallel else None)
    ref_cmd = servers.ref_cmd(b.tool("llama-server"), model.path, ports[1], b.threads, b.ctx, clients)
    got: dict[str, list[float]] = {"ours": [], "llama-server": []}
    short = set()
    with servers.Server(ours_cmd, ports[0], b.work / "ours-server.log") as ours, \
         servers.Server(ref_cmd, ports[1], b.work / "llama-server.log") as ref:  # fmt: skip
        for i in b.turns():
            batch = [prompts.new(b.n_short) for _ in range(clients)]
            rounds = {who: servers.concurrent(srv.url, batch, N) for who, srv in
                      (("ours", ours), ("llama-server", ref))}  # fmt: skip
            if b.keep(i):
                for who, (replies, secs) in rounds.items():
                    if any(r.completion_tokens < N for r in replies):
                        short.add(who)
                    got[who].append(sum(r.completion_tokens for r in replies) / secs)
                log(f"  run {i}/{b.runs}: {got['ours'][-1]:.1f} vs {got['llama-server'][-1]:.1f} t/s")
    notes = [b.end()] + [f"{who} stopped at EOS before {N} tokens in some replies" for who in sorted(short)]
    if not b.parallel:
        notes.append("our server has no --parallel in this build: it served the clients one at a time")
    body = f'{{"prompt": "$PROMPT_{b.n_short}", "max_tokens": {N}, "temperature": 0, "cache_prompt": false}}'
    cmds = [b.show(ours_cmd), b.show(ref_cmd), f"{clients} x POST /v1/completions {body}, all at once"]
    target = {1: ("≥ 0.95x", "ratio>=", 0.95), 4: ("≥ 0.90x", "ratio>=", 0.90)}.get(clients)
    plural = "client" if clients == 1 else "concurrent clients"
    return Row(3, f"aggregate generation, HTTP, {clients} {plural}, {model.label}", "tok/s",
               Stat(got["ours"]), Stat(got["llama-server"]), target, cmds, notes)  # fmt: skip
