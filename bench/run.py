"""The yardstick: every benchmark of llamabundle against llama.cpp, in one session,
into one table (bench/RESULTS.md, and every sample in bench/RESULTS.json).

    .venv/bin/python bench/run.py                # everything, about 15 minutes on 2 cores
    .venv/bin/python bench/run.py --quick        # 3 runs, Q4_0 only, 1 and 4 clients
    .venv/bin/python bench/run.py --only 1,3     # some rows
    .venv/bin/python bench/run.py --model m.gguf --runs 1 --out /tmp/r.md

Rows: 1 prompt and generation tokens/s through -p and over HTTP; 2 exec to first
token and to /health 200; 3 aggregate tokens/s with 1, 4 and 8 clients; 4 peak RSS;
5 build time against cp; 6 stub size; 7 generation tokens/s with a JSON schema against
without one and against llama-server with the same schema (SmolLM2-135M-Instruct over
/v1/chat/completions, and a small synthetic model with Llama 3's 128k vocabulary over
/v1/completions); 8 generation tokens/s of a model spread over two RPC workers on
loopback (and with a network's delay added) against the same bundle alone. It sets up what
it needs, once: the synthetic 0.5B model (bench/make_model.py) and its Q4_0, Q8_0 and F16
in bench/.cache (and, for row 7, the `tiny` one with Llama 3's vocabulary), the native
reference llama.cpp
(bench/reference.sh, in ~/.cache/llamabundle/toolchain/reference), and the runtime stub.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import harness
import machine
import make_model
import rows_constrained
import rows_rpc
import rows_speed
import rows_start
from harness import HERE, STORIES, Bench, Model, log
from report import Row, write

TARGETS = ("single-client prompt and generation tok/s ≥ 0.95x reference; exec → first token ≤ 1.2x "
           "llama-completion; 4 clients ≥ 0.9x llama-server --parallel 4; peak RSS ≤ reference + 60 MB; "
           "build ≤ 1.5x cp; stub ≤ 30 MB; generation with a JSON schema ≥ 0.9x without one, and ≥ 1.0x "
           "llama-server with the same schema")  # fmt: skip


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per figure, after a warm-up (default 5)")
    ap.add_argument("--only", help="rows to run, e.g. 1,3 (default: all seven)")
    ap.add_argument("--quick", action="store_true", help="3 runs, the Q4_0 model only, 1 and 4 clients")
    ap.add_argument("--model", action="append", type=Path, help="measure this GGUF instead (repeatable)")
    ap.add_argument("--build-model", type=Path, help="the model for row 5 (default: the synthetic F16, "
                    "or the first --model)")  # fmt: skip
    ap.add_argument("--preset", default="0.5b", help="make_model.py preset of the synthetic model")
    ap.add_argument("--vocab-preset", default="tiny", help="make_model.py preset of row 7's synthetic "
                    "model with Llama 3's vocabulary (default tiny)")  # fmt: skip
    ap.add_argument("--chat-model", type=Path, help="row 7's chat model (default: SmolLM2-135M-Instruct, "
                    "recorded by install.sh in .venv/chat-model)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the markdown to write")
    ap.add_argument("--threads", type=int, help="threads for both sides (default: physical cores)")
    ap.add_argument("--ctx", type=int, default=2048, help="context size for both sides (default 2048)")
    ap.add_argument("--prompt-tokens", type=int, default=512, help="long prompt, BOS included (512)")
    ap.add_argument("--gen-tokens", type=int, default=128, help="tokens to generate (128)")
    ap.add_argument("--short-tokens", type=int, default=16, help="each concurrent client's prompt (16)")
    ap.add_argument("--clients", default="1,4,8", help="concurrent clients for row 3 (1,4,8)")
    ap.add_argument("--stub", type=Path, help="runtime stub to fuse with (default: `llamabundle stub`)")
    ap.add_argument("--wait-idle", type=float, default=60, metavar="SECONDS",
                    help="wait up to SECONDS (default 60; 0: never) for other processes to leave the "
                    "CPU idle before measuring, and before a turn that follows a busy one (5 min in "
                    "all); run a turn again (twice a row at most) if they took over 30%% of the "
                    "CPU")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.clients = min(args.runs, 3), "1,4"
    args.rows = {int(x) for x in args.only.split(",")} if args.only else {1, 2, 3, 4, 5, 6, 7, 8}
    args.clients = [int(x) for x in args.clients.split(",")]
    return args


def estimate_minutes(b: Bench, rows: set[int]) -> float:
    """Seconds per turn (one run of ours and of the reference), as measured on a
    2-core EPYC with the 0.5B model, scaled by the model's size."""
    scale = max(0.2, b.models[0].path.stat().st_size / 300e6) if b.models else 1.0
    turn = 0.0
    if 1 in rows:
        turn += 30 * scale * len(b.models)
    if 2 in rows:
        turn += 1.5 * len(b.start_models)
    if 3 in rows:
        turn += 2.5 * scale * sum(b.clients) * b.n_gen / 128
    if 4 in rows:
        turn += 3.5 * scale * len(b.models)
    if 5 in rows:
        turn += 10 * b.build_model.stat().st_size / 1.1e9
    if 8 in rows:  # alone, pooled, and pooled behind two delays
        turn += 4 * 8 * scale * b.n_gen / 128
    if 7 in rows:  # four requests per model, whatever the 0.5B model's size
        turn += 4 * 1.5 * len(b.constrained) * b.n_gen / 128
    return (turn * (b.runs + 1) + 30) / 60


def setup(args, work: Path) -> Bench:
    ref = harness.ensure_reference()
    stub = args.stub or harness.ensure_stub()
    if args.model:
        models = [Model(p.stem, p.resolve()) for p in args.model]
        build_model = (args.build_model or args.model[0]).resolve()
        start = models[:1]
    elif args.rows <= {6, 7} and 7 in args.rows:  # row 7 brings its own models: no 0.5B one to make
        models, start, build_model = [], [], args.build_model
    else:
        types = ["Q4_0"] if args.quick else ["Q4_0", "Q8_0"]
        paths = harness.ensure_models(args.preset, [*types, *(["F16"] if 5 in args.rows else [])])
        models = [Model(t, paths[t]) for t in types]
        build_model = args.build_model or paths.get("F16") or paths["Q4_0"]
        start = models[:1] + ([Model("stories260K", STORIES)] if STORIES.exists() else [])
    constrained = []
    if 7 in args.rows and args.model:
        constrained = [(models[0], False)]
    elif 7 in args.rows:
        chat = args.chat_model or harness.chat_model()
        if chat is None:
            raise SystemExit("row 7 needs the chat model: run ./install.sh (it records SmolLM2 in "
                             ".venv/chat-model), or pass --chat-model")  # fmt: skip
        big = harness.ensure_models(args.vocab_preset, ["Q4_0"], vocab="llama3")["Q4_0"]
        big_label = f"synthetic {args.vocab_preset}, Llama 3 vocabulary, Q4_0"
        constrained = [(Model(chat.stem, chat.resolve()), True), (Model(big_label, big), False)]
    for m in {id(m): m for m in models + start + [m for m, _ in constrained]}.values():
        log(f"fusing {m.path.name} with the stub")
        m.bundle = harness.build_bundle(m.path, stub, work / m.path.stem)
    return Bench(runs=args.runs, threads=0, ctx=args.ctx, n_prompt=args.prompt_tokens, n_gen=args.gen_tokens,
                 n_short=args.short_tokens, clients=args.clients, models=models, start_models=start,
                 build_model=build_model, ref=ref, stub=stub, work=work, constrained=constrained)  # fmt: skip


def measure(b: Bench, rows: set[int]) -> tuple[list[Row], list[str]]:
    plan = []
    for m in b.models if 1 in rows else []:
        plan += [(rows_speed.cli_speed, m), (rows_speed.http_speed, m)]
    for m in b.start_models if 2 in rows else []:
        plan += [(rows_start.first_token, m), (rows_start.health, m)]
    plan += [(lambda b, c=c: rows_speed.concurrency(b, b.models[0], c), None) for c in b.clients if 3 in rows]
    plan += [(rows_start.peak_rss, m) for m in b.models if 4 in rows]
    plan += [(rows_start.build, None)] if 5 in rows else []
    plan += [(rows_start.stub_size, None)] if 6 in rows else []
    plan += [(lambda b, m, c=chat: rows_constrained.constrained(b, m, c), m) for m, chat in b.constrained]
    plan += [(rows_rpc.pooled, m) for m in b.models[:1] if 8 in rows]
    out, failures = [], []
    for fn, model in plan:
        try:
            got = fn(b, model) if model is not None else fn(b)
            out += got if isinstance(got, list) else [got]
        except Exception as e:  # one broken row must not lose the others; the exit status says it
            traceback.print_exc()
            name = getattr(fn, "__name__", "<lambda>")
            name = {"<lambda>": "concurrency" if model is None else "constrained"}.get(name, name)
            failures.append(f"{name}"
                            f"{f' ({model.label})' if model else ''} failed: {e}")  # fmt: skip
            log(f"FAILED: {failures[-1]}")
    return sorted(out, key=lambda r: r.row), failures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups: servers, work directory
    t0 = time.monotonic()
    (HERE / ".cache").mkdir(exist_ok=True)  # the work directory sits beside the models: one filesystem
    work = Path(tempfile.mkdtemp(prefix="work-", dir=HERE / ".cache"))
    try:
        b = setup(args, work)
        first = (b.models or [m for m, _ in b.constrained])[0]  # for the machine's and builds' details
        info = machine.bundle_info(first.bundle)
        b.threads = args.threads or info["hardware"]["cpu"]["physical_cores"]
        b.parallel = harness.server_has_parallel(first.bundle)
        b.wait_idle = args.wait_idle
        ref_build = machine.ref_build(b.tool("llama-bench"), first.path)
        header = machine.describe(info, ref_build, b.threads, b.ctx)
        header["Models"] = models_line(b)
        header["Load"] = quiet(args.wait_idle)
        if not args.model:
            header["Synthetic model"] = synthetic_line(args, b)
        log(
            f"measuring rows {sorted(args.rows)} with {b.runs} runs each, {b.threads} threads; "
            f"estimated time: about {estimate_minutes(b, args.rows):.0f} min"
        )
        rows, failures = measure(b, args.rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t0
    from method import method, notes, preamble

    write(args.out, header=header, rows=rows, preamble=preamble(b, TARGETS), method=method(b),
          notes=failures + notes(b, rows), elapsed=elapsed, argv=argv)  # fmt: skip
    log(f"wrote {args.out} in {elapsed / 60:.1f} min")
    return 1 if failures else 0


def quiet(wait: float) -> str:
    """How busy other processes kept the CPU just before measuring (waiting up to
    ``wait`` seconds for a 5-second window in which they used under 10%)."""
    deadline = time.monotonic() + wait
    while True:
        watch = machine.CpuWatch()
        time.sleep(5)
        busy = watch.foreign()
        if busy < 0.10 or time.monotonic() >= deadline:
            break
        log(f"other processes use {busy:.0%} of the CPU; waiting for a quiet machine")
    if busy >= 0.10:
        log(f"WARNING: other processes use {busy:.0%} of the CPU: figures will be noisy")
    return f"other processes used {busy:.0%} of the CPU in the 5 s before measuring"


VOCAB_NAMES = {"stories260K": "stories260K's", "llama3": "Llama 3's"}


def synthetic_line(args, b: Bench) -> str:
    def shape(preset: str, vocab: str) -> str:
        names = ("n_embd", "layers", "heads", "KV heads", "n_ff")
        dims = ", ".join(f"{k} {v}" for k, v in zip(names, make_model.PRESETS[preset], strict=True))
        n_vocab = make_model.VOCABS[vocab][0]
        return (f"`{preset}` preset of bench/make_model.py: llama, {make_model.n_params(preset, n_vocab):,} "
                f"parameters ({dims}, {VOCAB_NAMES[vocab]} {n_vocab:,}-token vocabulary)")  # fmt: skip

    parts = [shape(args.preset, "stories260K")] if b.models else []
    if b.constrained:
        parts.append(("for row 7, the " if parts else "") + shape(args.vocab_preset, "llama3") + ", Q4_0")
    return "; ".join(parts) + "; random weights, quantized by llama.cpp's quantizer"


def models_line(b: Bench) -> str:
    names = {m.path.name: m.path for m in [*b.models, *b.start_models, *(m for m, _ in b.constrained)]}
    names |= {b.build_model.name: b.build_model} if b.build_model else {}
    return "; ".join(f"`{n}` {p.stat().st_size / 1e6:.0f} MB" for n, p in names.items())


if __name__ == "__main__":
    sys.exit(main())
