"""The prose of RESULTS.md: what was measured and how, filled in with the session's settings."""

from __future__ import annotations

from harness import Bench
from report import Row


def preamble(b: Bench, targets: str) -> list[str]:
    return [
        f"Every figure is the median of {b.runs} timed runs after one warm-up run that is dropped "
        "(it also warms the page cache). Ours and the reference take turns run by run, so load from "
        "elsewhere on the machine falls on both alike"
        + (
            f"; a turn that follows one in which other processes used over 10% of the CPU first waits "
            f"(up to {b.wait_idle:.0f} s, 5 min in all) for a quiet 2 s, and a turn in which they used "
            f"over 30% is run again (twice a row at most)."
            if b.wait_idle
            else "."
        ),
        "",
        f'Targets: {targets}. "none set" rows are shown for context.',
    ]


def method(b: Bench) -> list[str]:
    P, N, T = b.n_prompt, b.n_gen, b.threads
    return [
        f"1. **Tokens/s through `-p`.** Ours: `BUNDLE -p PROMPT -n {N} --temp 0 --timings`, whose "
        f"stderr line gives the prompt's tokens and milliseconds (one `llama_decode` of the whole "
        f"prompt, in batches of 512) and the generated tokens and milliseconds (sampling and decoding "
        f"each token). PROMPT is text that llama.cpp's tokenizer makes exactly {P} tokens, BOS "
        f"included (checked on every run against the `prompt N tokens` line), and a new one each run. "
        f"Reference: `llama-bench -p {P} -n 0` for prompt processing and `llama-bench -p 0 -n {N} "
        f"-d {P}` for generation, so that generation runs at the same depth ({P} tokens already in "
        f"the KV cache) as ours; one repetition (`-r 1`) per turn so the two sides can alternate. "
        f"llama-bench ignores EOS; ours is greedy and its generated-token count is checked (the "
        f"synthetic model's EOS and control tokens have zero output rows, so greedy decoding never "
        f"picks them). Ours' prompt time also holds the one-time costs of a process's first decode, "
        f"which llama-bench's warm-up run hides.",
        f"   **Over HTTP.** Both servers run side by side, each with one slot (`--parallel 1`; "
        f"llama-server `-np 1 --kv-unified`); one client sends a non-streaming `/v1/completions` "
        f"with a new {P}-token prompt each turn (the same text to both, so each sees it once), "
        f"`max_tokens` {N}, temperature 0 and `cache_prompt: false`. The figures are each server's "
        f"own `timings.prompt_per_second` and `timings.predicted_per_second`. They mean the same "
        f"thing: prompt tokens processed / time to process them, and generated tokens / time of the "
        f"decode steps (llama-server divides the n-1 decode steps after the first token by their "
        f"time; ours divides n tokens by the time of n sample+decode steps). `usage.prompt_tokens` "
        f"must be {P} and `timings.prompt_n` at least {P - 1} (only BOS may come from a cache) on "
        f"both, or the run fails.",
        "2. **Exec → first token.** Wall time from exec to the first byte on the command's stdout "
        "(read unbuffered), with the short prompt `Once upon a time` and 16 tokens; llama-completion "
        "runs with `-no-cnv --no-display-prompt` so it prints only generated text, and its stdout is "
        "flushed per token (the harness checks neither side echoes the prompt and shows the first "
        "bytes each printed). llama-completion does its default warm-up decode, as run. "
        "**Exec → /health 200:** wall time from exec until `GET /health` first answers 200, polled "
        "every 10 ms; the server is stopped after each run.",
        f"3. **Concurrent clients.** Per client count C, both servers run side by side with C slots "
        f"(ours `--parallel C`; llama-server `-np C --kv-unified`, one KV cache of {b.ctx} cells "
        f"shared by the slots, as ours). Each turn, C client threads released together each send a "
        f"new {b.n_short}-token prompt for {N} tokens at temperature 0; aggregate tokens/s = all "
        f"completion tokens / wall time from the first request sent to the last reply read.",
        f"4. **Peak RSS.** `-p` with the short prompt, {N} tokens, against llama-completion with the "
        "same flags. Every 10 ms the harness walks the process tree (`/proc/PID/task/*/children`) and "
        "reads each process's `VmHWM` (its own peak RSS, which only grows); the figure is the sum of "
        "each process's peak, so a PyInstaller launcher and its child both count (a slight "
        "overcount if both peaked on shared pages). A process that never had a child also gets "
        "`wait4()`'s `ru_maxrss`. RSS includes the mapped model pages each touched.",
        "5. **Build.** `llamabundle build MODEL -o OUT --runtime STUB` (the cached stub), plain and "
        "with `--compress` (zstd, default level), against `cp MODEL OUT && sync OUT`, all into the "
        "same directory on the same filesystem as the model, page cache warm, OUT deleted before "
        "each command. fsync policy, equal on both sides: `llamabundle build` fsyncs the output file "
        "once before its atomic rename; `sync OUT` fsyncs the copy once; neither fsyncs the directory.",
        "6. **Stub size.** The size of the file `llamabundle stub` prints (the runtime every bundle "
        "carries; a bundle is this plus the model plus a few KB).",
        f"7. **Constrained generation.** Per model, both servers run side by side with one slot each (as "
        f"row 1 over HTTP). Each turn sends four non-streaming requests, greedy (temperature 0), "
        f"`max_tokens` {N}: ours and llama-server with a JSON schema, ours and llama-server without it "
        f"(the order reversed every other turn). A chat model (SmolLM2-135M-Instruct, 49,152-token "
        f"vocabulary) is asked over `/v1/chat/completions` for a list of animals, the schema given as "
        f"OpenAI's `response_format` of type `json_schema`; a completion model (the synthetic one with "
        f"Llama 3's 128,256-token vocabulary) gets a fixed short prompt over `/v1/completions`, the "
        f"schema as the `json_schema` field (both servers take both forms). The schema is an object with "
        f"an array of at least {2 * N} strings, so no reply can finish before `max_tokens`; every "
        f"end-of-generation token gets `logit_bias` -100 in all four requests, so the request without "
        f"a schema runs to `max_tokens` too. Each server turns the schema into a grammar itself (ours: "
        f"llama-cpp-python's port of llama.cpp's json-schema-to-grammar; llama-server: the C++ one) and "
        f"samples it the same way: the unconstrained chain picks a token, and only when the grammar "
        f"refuses it is the token sampled again with the grammar applied to every candidate. The two "
        f"converters differ in the whitespace they allow between JSON tokens (ours: none or one space; "
        f"llama.cpp's: that, or one or two newlines and up to 20 spaces or tabs), so with the schema "
        f"the two servers need not write the same text: the token counts are what is checked. The "
        f"figures are each server's own `timings.predicted_per_second`, as in row 1 (generated tokens / "
        f"time of the sample+decode steps, so the grammar's cost is in it); every reply's "
        f"`usage.completion_tokens` and `timings.predicted_n` are listed under the row. The first row "
        f"of each model compares ours with the schema against ours without it (the reference column "
        f"holds ours without), the second ours against llama-server, both with the schema.",
        "",
        f"Both sides always get `-t {T}` and `-c {b.ctx}`. The rows' notes (under the commands) say how "
        "long each took and how much CPU other processes used meanwhile (from /proc/stat): a busy "
        "machine widens the min–max spread.",
    ]


def notes(b: Bench, rows: list[Row]) -> list[str]:
    out = []
    if not b.parallel:
        out.append("Our server did not offer `--parallel` in this build: row 3 ran it with its default "
                   "(requests one at a time) against llama-server with C slots.")  # fmt: skip
    for r in rows:
        for n in r.notes:
            if "EOS" in n:
                out.append(f"{r.what}: {n}.")
    return out
