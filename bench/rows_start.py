"""Rows 2, 4, 5 and 6: start-up, peak memory, build time, stub size.

As in rows_speed, ours and the reference take turns and the first turn is a
warm-up (it also warms the page cache) that is dropped.
"""

from __future__ import annotations

import re

import servers
from harness import LLAMABUNDLE, SHORT_PROMPT, Bench, Model, log
from measure import Stat, first_byte, rm, tree_peak_rss, wall
from report import Row

GEN = re.compile(r"generated (\d+) tokens")
EVAL_RUNS = re.compile(r"\beval time =\s*[\d.]+ ms /\s*(\d+) runs")


def human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _first_byte(cmd: list[str], lost: list[int]) -> tuple[float, bytes]:
    """first_byte(), tried again (up to 40 times) when the command printed nothing at all:
    llama-completion prints through llama.cpp's asynchronous logger, which can lose its
    whole output when a tiny model finishes in milliseconds (the logger is never flushed
    at exit; stories260K lost it in 15 of 30 runs on one machine). Such runs have no
    first byte to time; they are counted, not measured."""
    for _ in range(40):
        try:
            return first_byte(cmd)
        except RuntimeError as e:
            if "printed nothing" not in str(e):
                raise
            lost[0] += 1
    return first_byte(cmd)


def _ours_p(b: Bench, model: Model, n: int) -> list[str]:
    return [str(model.bundle), "-p", SHORT_PROMPT, "-n", str(n), "--temp", "0", "-t", str(b.threads),
            "-c", str(b.ctx)]  # fmt: skip


def _completion(b: Bench, model: Model, n: int) -> list[str]:
    return [str(b.tool("llama-completion")), "-m", str(model.path), "-p", SHORT_PROMPT, "-n", str(n),
            "--temp", "0", "-t", str(b.threads), "-c", str(b.ctx),
            "-no-cnv", "--no-display-prompt"]  # fmt: skip


def first_token(b: Bench, model: Model) -> Row:
    """Exec to the first byte on stdout; both print only generated text there (checked:
    the two greedy continuations must begin alike, and neither may echo the prompt)."""
    b.begin(f"row 2: exec to first token, {model.label}")
    ours_cmd, ref_cmd = _ours_p(b, model, 16), _completion(b, model, 16)
    got: dict[str, list[float]] = {"ours": [], "ref": []}
    texts: dict[str, bytes] = {}
    lost = [0]
    for i in b.turns():
        turn = {}
        for who, cmd in (("ours", ours_cmd), ("ref", ref_cmd)):
            turn[who], texts[who] = _first_byte(cmd, lost)
        if b.keep(i):
            for who, secs in turn.items():
                got[who].append(secs)
    notes = [b.end()] + ([f"{lost[0]} runs printed nothing and were run again"] if lost[0] else [])
    # Ours prints U+FFFD for bytes that are not UTF-8 where llama-completion prints them raw:
    # compare the texts decoded alike.
    a, c = (texts[k].decode("utf-8", "replace").strip() for k in ("ours", "ref"))
    if a.startswith(SHORT_PROMPT) or c.startswith(SHORT_PROMPT):
        raise RuntimeError("a first-token command echoed its prompt: its first byte is not a generated token")
    same = a[:8] == c[:8]
    notes.append(f"first characters printed: ours {a[:16]!r}, llama-completion {c[:16]!r}"
                 + ("" if same else " (they differ: the greedy continuations diverge)"))  # fmt: skip
    return Row(2, f"exec → first generated token on stdout, {model.label}", "s", Stat(got["ours"]),
               Stat(got["ref"]), ("≤ 1.20x", "ratio<=", 1.2), [b.show(ours_cmd), b.show(ref_cmd)],
               notes)  # fmt: skip


def health(b: Bench, model: Model) -> Row:
    """Exec to the first /health 200, polled every 10 ms; each server is stopped after."""
    b.begin(f"row 2: exec to /health 200, {model.label}")
    got: dict[str, list[float]] = {"ours": [], "ref": []}
    cmds = []
    for i in b.turns():
        ports = servers.free_port(), servers.free_port()
        ours_cmd = servers.ours_cmd(model.bundle, ports[0], b.threads, b.ctx, 1 if b.parallel else None)
        ref_cmd = servers.ref_cmd(b.tool("llama-server"), model.path, ports[1], b.threads, b.ctx, 1)
        turn = {}
        for who, cmd, port, logname in (("ours", ours_cmd, ports[0], "ours-server.log"),
                                        ("ref", ref_cmd, ports[1], "llama-server.log")):  # fmt: skip
            with servers.Server(cmd, port, b.work / logname) as srv:
                turn[who] = srv.ready
        if b.keep(i):
            for who, secs in turn.items():
                got[who].append(secs)
        cmds = [b.show(ours_cmd), b.show(ref_cmd)]
    return Row(2, f"exec → `/health` 200, `--server`, {model.label}", "s", Stat(got["ours"]),
               Stat(got["ref"]), None, cmds, [b.end()])  # fmt: skip


def peak_rss(b: Bench, model: Model) -> Row:
    """Peak RSS of the whole process tree while `-p` generates n_gen tokens."""
    N = b.n_gen
    b.begin(f"row 4: peak RSS, {model.label}")
    ours_cmd = [*_ours_p(b, model, N), "--timings"]
    ref_cmd = _completion(b, model, N)
    got: dict[str, list[float]] = {"ours": [], "ref": []}
    procs, gens = set(), {"ours": set(), "ref": set()}
    for i in b.turns():
        turn = {who: tree_peak_rss(cmd) for who, cmd in (("ours", ours_cmd), ("ref", ref_cmd))}
        if not b.keep(i):
            continue
        for who, r in turn.items():
            m = GEN.search(r.stderr) if who == "ours" else EVAL_RUNS.search(r.stderr)
            # llama-completion evaluates all tokens but the last; its log can be lost at exit (0: unknown)
            gens[who].add((int(m.group(1)) + (who == "ref")) if m else 0)
            got[who].append(r.peak_rss / 1e6)
        procs.add(turn["ours"].processes)
    notes = [b.end(), f"processes counted for ours: {sorted(procs)}; tokens generated: ours "
             f"{sorted(gens['ours'])}, llama-completion {sorted(gens['ref'])}"]  # fmt: skip
    return Row(4, f"peak RSS, `-p` generating {N} tokens, {model.label}", "MB", Stat(got["ours"]),
               Stat(got["ref"]), ("≤ ref + 60 MB", "plus<=", 60.0), [b.show(ours_cmd), b.show(ref_cmd)],
               notes)  # fmt: skip


def build(b: Bench) -> list[Row]:
    """`llamabundle build` (plain and --compress) against `cp` + `sync FILE` of the same
    model into the same directory; every output is deleted before the next command."""
    model = b.build_model
    size = model.stat().st_size
    b.begin(f"row 5: build time, {model.name} ({human(size)})")
    out = b.work / "build-out"
    cmds = {
        "cp": ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh", str(model), str(out)],
        "build": [str(LLAMABUNDLE), "build", str(model), "-o", str(out), "--runtime", str(b.stub)],
        "build --compress": [str(LLAMABUNDLE), "build", str(model), "-o", str(out), "--runtime", str(b.stub),
                             "--compress"],
    }  # fmt: skip
    got: dict[str, list[float]] = {k: [] for k in cmds}
    stored = 0
    for i in b.turns():
        turn = {}
        for key, cmd in cmds.items():
            rm(out)
            turn[key] = wall(cmd)
            if key == "build --compress":
                stored = out.stat().st_size
        if b.keep(i):
            for key, secs in turn.items():
                got[key].append(secs)
            log(
                f"  run {i}/{b.runs}: cp {got['cp'][-1]:.2f} s, build {got['build'][-1]:.2f} s, "
                f"--compress {got['build --compress'][-1]:.2f} s"
            )
    rm(out)
    note = b.end()
    what = f"{model.name}, {human(size)}"
    t15 = ("≤ 1.50x", "ratio<=", 1.5)
    cp = Stat(got["cp"])
    return [
        Row(5, f"`llamabundle build`, cached stub, {what}", "s", Stat(got["build"]), cp, t15,
            [b.show(cmds["build"]), b.show(cmds["cp"])], [note]),
        Row(5, f"`llamabundle build --compress`, cached stub, {what}", "s", Stat(got["build --compress"]), cp,
            t15, [b.show(cmds["build --compress"])], [f"the compressed bundle is {human(stored)}"]),
    ]  # fmt: skip


def stub_size(b: Bench) -> Row:
    size = b.stub.stat().st_size / 1e6
    return Row(6, "runtime stub size (`llamabundle stub`)", "MB", Stat([size]), None,
               ("≤ 30 MB", "abs<=", 30.0), ["llamabundle stub"],
               [f"{b.stub.stat().st_size / 2**20:.1f} MiB"])  # fmt: skip
