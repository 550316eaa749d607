"""The benchmark harness (bench/run.py) runs end to end and writes a well-formed table.

It runs on stories260K with one run per figure and small sizes, so it needs neither
the synthetic 0.5B model nor much time; it does need the native reference llama.cpp,
which bench/reference.sh builds once (about 10 minutes on 2 cores) into
~/.cache/llamabundle/toolchain/reference/<key>, keyed by the sdist, the flags and this CPU, and later
runs reuse. Timings are never asserted: only that every row has its numbers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT

BENCH = ROOT / "bench"
NUMBER = r"\d+(\.\d+)?"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


@pytest.mark.e2e  # loads stories260K's vocabulary into llama.cpp
def test_prompts_have_exact_token_counts_and_differ_from_the_first_word(bench_modules, model):
    from prompts import Prompts, Tokenizer

    prompts = Prompts(Tokenizer(model))
    texts = [prompts.new(n) for n in (512, 512, 64, 8)]
    assert [prompts.tok.count(t) for t in texts] == [512, 512, 64, 8]
    firsts = [prompts.tok.tokenize(t)[1] for t in texts]  # [0] is BOS
    assert len(set(firsts)) == len(firsts)


def test_targets_are_judged_by_their_kind(bench_modules):
    from measure import Stat
    from report import Row, table

    def met(ours, ref, target):
        return Row(1, "x", "tok/s", Stat(ours), Stat(ref) if ref else None, target).met

    assert met([96, 90, 99], [100], ("≥ 0.95x", "ratio>=", 0.95)) is True
    assert met([94], [100], ("≥ 0.95x", "ratio>=", 0.95)) is False
    assert met([1.3], [1.0], ("≤ 1.20x", "ratio<=", 1.2)) is False
    assert met([150], [100], ("≤ ref + 60 MB", "plus<=", 60)) is True
    assert met([31], None, ("≤ 30 MB", "abs<=", 30)) is False
    assert met([1], [1], None) is None
    line = table([Row(1, "x", "s", Stat([1.0, 2.0, 3.0]), Stat([1.0]), ("≤ 1.20x", "ratio<=", 1.2))])[-1]
    assert line == "| 1 | x | 2.000 s (1.000–3.000) | 1.000 s | 2.00x | ≤ 1.20x | **no** |"


def test_constrained_requests_ask_both_servers_the_same_thing(bench_modules):
    from rows_constrained import _shown, request, schema

    sch = schema(256)
    assert sch["properties"]["items"]["minItems"] == 256
    path, body = request(True, 128, {"2": -100}, sch)
    assert path == "/v1/chat/completions" and body["max_tokens"] == 128 and body["temperature"] == 0
    assert body["response_format"]["json_schema"]["schema"] is sch and body["logit_bias"] == {"2": -100}
    bare = request(True, 128, {"2": -100}, None)[1]
    assert {k: v for k, v in body.items() if k != "response_format"} == bare
    path, body = request(False, 16, {}, sch)
    assert path == "/v1/completions" and body["json_schema"] is sch and "messages" not in body
    assert _shown(path, body).endswith('"json_schema": $SCHEMA}')


@pytest.mark.e2e
def test_run_writes_every_row_with_numbers(stub, model, reference_tools, tmp_path):
    out = tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(BENCH / "run.py"), "--model", str(model), "--runs", "1",
           "--prompt-tokens", "64", "--gen-tokens", "16", "--short-tokens", "8", "--clients", "1,2",
           "--stub", str(stub), "--out", str(out), "--wait-idle", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-5000:]
    text = out.read_text()
    for label in ("CPU", "CPU flags", "ggml CPU variant loaded", "Memory", "Kernel", "Date",
                  "llama-cpp-python 0.", "Threads", "Reference"):  # fmt: skip
        assert label in text, label
    rows = [line.split("|")[1:-1] for line in text.splitlines() if re.match(r"\| \d \|", line)]
    cells = [[c.strip() for c in row] for row in rows]
    assert {c[0] for c in cells} == {"1", "2", "3", "4", "5", "6", "7", "8"}
    # -p and HTTP pp/tg; first token, /health; 1, 2 clients; RSS; build, --compress; stub; row 7's
    # three; row 8's pooled, and pooled behind two delays
    assert len(cells) == 4 + 2 + 2 + 1 + 2 + 1 + 3 + 3
    for number, what, ours, ref, ratio, target, met in cells:
        assert re.match(NUMBER + r" (tok/s|s|MB)", ours), (what, ours)
        if number != "6":  # the stub has no reference
            assert re.match(NUMBER + r" (tok/s|s|MB)", ref), (what, ref)
            assert re.fullmatch(NUMBER + "x", ratio), (what, ratio)
        assert met in ("yes", "**no**", "—"), (what, met)
        assert (met == "—") == (target == "none set"), (what, target, met)
    assert "## Exact commands" in text and "llama-bench" in text and "llama-server" in text
    data = json.loads(out.with_suffix(".json").read_text())
    assert all(len(r["ours"]) == 1 for r in data["rows"])
