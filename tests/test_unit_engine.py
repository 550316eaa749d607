"""The generation engine over a modelled llama.cpp (tests/fakellama.py): text, statistics,
prefix reuse and its cache rules, stop strings, UTF-8, the KV cache filling up,
cancellation, batching of slots, and the scheduler. No model file, no libllama."""

from __future__ import annotations

import pytest
from fakellama import EOG, FILLER, FILLER_PIECE, FakeLlama, FakeModel, Interrupt

from runtime.errors import ContextError, ModelError
from runtime.llama.engine import Engine
from runtime.llama.job import Job, Sampling
from runtime.llama.sampler import make_chain
from runtime.llama.slots import GEN, IDLE, PROMPT, Slot, pick

GREEDY = Sampling(temp=0)
DOT = FILLER_PIECE.decode()


def make(n_ctx=64, n_batch=32, n_slots=1, **fake):
    C = FakeLlama(**fake)
    model = FakeModel(C)
    engine = Engine(model, n_ctx=n_ctx, n_threads=1, n_batch=n_batch, n_slots=n_slots)
    return engine, model, C


def job(tokens, **kw):
    kw.setdefault("sampling", GREEDY)
    return Job("generate", list(tokens), **kw)


def consistent(engine, C):
    """What each slot believes it cached is what the cache holds."""
    for s in engine.slots:
        assert C.cache(s.seq) == s.cached, f"slot {s.seq}"


def run(engine, C, *jobs, limit=500):
    """Step until every job has ended; check the cache after each step."""
    for _ in range(limit):
        if all(ended(j) for j in jobs):
            return
        if not engine.step():
            break
        consistent(engine, C)
    assert all(ended(j) for j in jobs), "the engine stopped before the jobs ended"


def ended(j) -> bool:
    return any(e[0] in ("done", "error") for e in list(j.events.queue))


def events(j) -> list:
    out = []
    while not j.events.empty():
        out.append(j.events.get_nowait())
    return out


def pieces(j) -> list[str]:
    return [e[1] for e in list(j.events.queue) if e[0] == "piece"]


def text(j) -> str:
    return "".join(pieces(j))


def last_event(j):
    return list(j.events.queue)[-1]


# -- one job ---------------------------------------------------------------------
def test_text_and_stats_of_a_job_that_stops():
    engine, model, C = make()
    gen = model.chain(13, [b"Hello", b",", b" world"])
    j = job([11, 12, 13])
    assert engine.add(j)
    run(engine, C, j)
    assert pieces(j) == ["Hello", ",", " world"]
    tag, stats = last_event(j)
    assert tag == "done" and stats is j.stats
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens) == (3, 0, 3)
    assert stats.finish_reason == "stop"
    assert engine.generated_tokens == 3
    # the prompt in one batch (logits for its last token only), then one token per step
    assert C.decodes[0].rows == [(0, 0, 11, False), (0, 1, 12, False), (0, 2, 13, True)]
    assert [d.rows for d in C.decodes[1:]] == [[(0, 3 + i, t, True)] for i, t in enumerate(gen)]
    assert engine.slots[0].state == IDLE and not C.live_samplers  # the sampler chain is freed
    assert not engine.step()


def test_a_job_that_does_not_stream_gets_its_text_in_one_piece():
    engine, model, C = make()
    model.chain(13, [b"Hello", b",", b" world"])
    j = job([11, 12, 13], stream=False)
    engine.add(j)
    run(engine, C, j)
    assert events(j) == [("piece", "Hello, world", []), ("done", j.stats)]
    assert j.stats.completion_tokens == 3


def test_max_tokens_ends_with_length():
    engine, model, C = make()
    model.chain(13, [b"Hello", b",", b" world"])
    j = job([11, 12, 13], max_tokens=2)
    engine.add(j)
    run(engine, C, j)
    assert text(j) == "Hello,"
    assert (j.stats.completion_tokens, j.stats.finish_reason) == (2, "length")
    assert len(C.decodes) == 2  # the second token is sampled, never decoded


def test_max_tokens_zero_is_length_with_no_text_and_no_decode():
    engine, model, C = make()
    model.chain(13, [b"Hello"])
    j = job([11, 12, 13], max_tokens=0)
    assert engine.add(j)
    assert [e[0] for e in events(j)] == ["done"]
    assert (j.stats.finish_reason, j.stats.completion_tokens, j.stats.prompt_tokens) == ("length", 0, 3)
    assert not engine.step() and C.decodes == []
    assert engine.slots[0].state == IDLE and not C.live_samplers


def test_a_full_context_ends_generation_with_length():
    engine, model, C = make(n_ctx=8)
    j = job([11, 12, 13])  # nothing scripted: the filler, forever
    engine.add(j)
    run(engine, C, j)
    assert j.stats.finish_reason == "length"
    assert text(j) == DOT * 5
    # prompt + answer fill the context; the last token is sampled, never decoded
    assert j.stats.prompt_tokens + j.stats.completion_tokens == 8
    assert max(pos for d in C.decodes for _, pos, _, _ in d.rows) == 6
    assert all(d.rc == 0 for d in C.decodes)


def test_a_prompt_longer_than_the_batch_is_decoded_in_chunks():
    engine, model, C = make(n_ctx=64, n_batch=4)
    model.chain(19, [b"ok"])
    prompt = list(range(10, 20))
    j = job(prompt)
    engine.add(j)
    run(engine, C, j)
    assert text(j) == "ok"
    chunks = [d.rows for d in C.decodes[:3]]
    assert [[t for _, _, t, _ in rows] for rows in chunks] == [prompt[0:4], prompt[4:8], prompt[8:10]]
    assert [[lg for *_, lg in rows] for rows in chunks] == [[False] * 4, [False] * 4, [False, True]]


def test_context_smaller_than_the_batch_never_overflows_it():
    engine, model, C = make(n_ctx=8, n_batch=512)  # llama.cpp clamps n_batch to n_ctx
    j = job(range(10, 17))  # 7 tokens: one cell left for the answer
    engine.add(j)
    run(engine, C, j)
    assert (j.stats.completion_tokens, j.stats.finish_reason) == (1, "length")


@pytest.mark.parametrize("temp", [0.0, 0.7])
def test_make_chain_builds_llama_cpp_s_chain(temp):
    C = FakeLlama()
    s = Sampling(temp=temp, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1, seed=7)
    chain = make_chain(C, 1000, s, {})
    kinds = [x.kind for x in chain.chain]
    if temp == 0:
        assert kinds == ["penalties", "greedy"]
    else:
        assert kinds == ["penalties", "top_k", "top_p", "min_p", "temp", "dist"]
        assert chain.chain[-1].args == (7,)
    C.llama_sampler_free(chain)
    assert not C.live_samplers


# -- stop strings and UTF-8 --------------------------------------------------------
def test_a_stop_string_spanning_tokens_ends_the_text_before_it():
    engine, model, C = make()
    model.chain(13, [b"Hel", b"lo ST", b"OP more", b"never"])
    j = job([11, 12, 13], stop=["STOP"])
    engine.add(j)
    run(engine, C, j)
    assert text(j) == "Hello "
    assert all("S" not in p for p in pieces(j))  # the start of the stop string was held back
    assert (j.stats.finish_reason, j.stats.completion_tokens) == ("stop", 3)
    assert len(C.decodes) == 3  # nothing after the stop is decoded


def test_text_held_for_a_stop_string_is_flushed_at_the_end():
    engine, model, C = make()
    model.chain(13, [b"a", b"ST"])  # the stop string never completes: EOG comes first
    j = job([11, 12, 13], stop=["STOP"])
    engine.add(j)
    run(engine, C, j)
    assert text(j) == "aST" and j.stats.finish_reason == "stop"


def test_a_stop_string_also_ends_a_job_that_does_not_stream():
    engine, model, C = make()
    model.chain(13, [b"one ", b"two", b" three"])
    j = job([11, 12, 13], stop=["two"], stream=False)
    engine.add(j)
    run(engine, C, j)
    assert pieces(j) == ["one "]


def test_a_character_split_across_tokens_arrives_whole():
    engine, model, C = make()
    model.chain(13, [b"caf", b"\xc3", b"\xa9!", b"\xf0\x9f", b"\x98", b"\x80"])
    j = job([11, 12, 13])
    engine.add(j)
    run(engine, C, j)
    assert pieces(j) == ["caf", "é!", "😀"]
    assert j.stats.completion_tokens == 6


def test_a_character_cut_off_by_the_end_becomes_a_replacement_character():
    engine, model, C = make()
    model.chain(13, [b"a", b"\xe2\x82"])
    j = job([11, 12, 13])
    engine.add(j)
    run(engine, C, j)
    assert text(j) == "a\ufffd"


# -- prefix reuse ------------------------------------------------------------------
def _first_job(engine, model, C):
    gen = model.chain(14, [b"a", b"b"])
    j = job([11, 12, 13, 14])
    engine.add(j)
    run(engine, C, j)
    assert text(j) == "ab"
    return [11, 12, 13, 14, *gen]


def test_a_second_job_decodes_only_what_is_new():
    engine, model, C = make()
    _first_job(engine, model, C)
    model.chain(21, [b"c"])
    n = len(C.decodes)
    j = job([11, 12, 13, 20, 21])
    engine.add(j)
    run(engine, C, j)
    assert (j.stats.prompt_tokens, j.stats.cached_tokens) == (5, 3)
    assert C.decodes[n].rows == [(0, 3, 20, False), (0, 4, 21, True)]
    assert text(j) == "c" and C.cache(0)[:5] == [11, 12, 13, 20, 21]


def test_the_next_turn_reuses_the_whole_previous_answer():
    engine, model, C = make()
    cached = _first_job(engine, model, C)
    model.chain(31, [b"d"])
    n = len(C.decodes)
    j = job([*cached, 30, 31])
    engine.add(j)
    run(engine, C, j)
    assert j.stats.cached_tokens == len(cached) == 6
    assert [t for _, _, t, _ in C.decodes[n].rows] == [30, 31]


def test_a_fully_cached_prompt_still_decodes_its_last_token():
    engine, model, C = make()
    _first_job(engine, model, C)
    n = len(C.decodes)
    j = job([11, 12, 13, 14])
    engine.add(j)
    run(engine, C, j)
    assert j.stats.cached_tokens == 3
    assert C.decodes[n].rows == [(0, 3, 14, True)]  # fresh logits for the answer
    assert text(j) == "ab"


def test_a_recurrent_cache_that_cannot_drop_a_tail_starts_over():
    engine, model, C = make(recurrent=True)
    _first_job(engine, model, C)
    model.chain(21, [b"c"])
    n = len(C.decodes)
    j = job([11, 12, 13, 20, 21])
    engine.add(j)
    run(engine, C, j)
    assert j.stats.cached_tokens == 0
    assert [pos for _, pos, _, _ in C.decodes[n].rows] == [0, 1, 2, 3, 4]
    assert text(j) == "c"


def test_a_recurrent_cache_keeps_a_prefix_that_needs_no_rollback():
    engine, model, C = make(recurrent=True)
    cached = _first_job(engine, model, C)
    n = len(C.decodes)
    j = job([*cached, 30])
    engine.add(j)
    run(engine, C, j)
    assert j.stats.cached_tokens == 6
    assert C.decodes[n].rows == [(0, 6, 30, True)]


def test_a_sliding_window_cache_whose_start_slid_out_starts_over():
    engine, model, C = make(window=4)
    _first_job(engine, model, C)
    assert C.llama_memory_seq_pos_min(None, 0) > 0
    n = len(C.decodes)
    j = job([11, 12, 13, 20])
    engine.add(j)
    run(engine, C, j)
    assert j.stats.cached_tokens == 0
    assert [pos for _, pos, _, _ in C.decodes[n].rows] == [0, 1, 2, 3]


# -- the KV cache fills up ---------------------------------------------------------
def test_a_full_cache_drops_the_least_recently_used_idle_slot_first():
    engine, model, C = make(n_ctx=16, n_batch=16, n_slots=3)
    a, b = job(range(100, 106), max_tokens=1), job(range(200, 206), max_tokens=1)
    for j in (a, b):
        engine.add(j)
        run(engine, C, j)
    assert [len(s.cached) for s in engine.slots] == [6, 6, 0]
    c = job(range(300, 306), max_tokens=3)
    engine.add(c)
    run(engine, C, c)
    rcs = [d.rc for d in C.decodes]
    assert 1 in rcs  # llama.cpp said there was no room...
    failed = rcs.index(1)
    assert C.decodes[failed + 1].rows == C.decodes[failed].rows  # ...and the batch was retried
    assert engine.slots[0].cached == [] and C.cache(0) == []  # a ended first: its cache went
    assert engine.slots[1].cached == list(range(200, 206))  # b's cache is kept
    assert (c.stats.finish_reason, text(c)) == ("length", DOT * 3)


def test_a_full_cache_with_nothing_idle_ends_the_job_holding_most_cells():
    engine, model, C = make(n_ctx=16, n_batch=16, n_slots=2)
    x = job(range(100, 106))  # the filler, forever
    model.chain(203, [b"y%d" % i for i in range(6)])
    y = job(range(201, 204))
    engine.add(x)
    engine.add(y)
    for _ in range(4):
        engine.step()
    assert C.used == 15 and not ended(x)
    engine.step()  # 17 cells wanted: x holds 9 of them, y 6
    assert [d.rc for d in C.decodes[-2:]] == [1, 0]
    assert C.decodes[-1].seqs() == {1}
    assert ended(x) and (x.stats.finish_reason, x.stats.completion_tokens) == ("length", 4)
    assert engine.slots[0].state == IDLE and C.cache(0) == []
    run(engine, C, y)
    assert (y.stats.finish_reason, text(y)) == ("stop", "y0y1y2y3y4y5")


def test_prompts_whose_cached_prefixes_fill_the_cache_make_room_for_one():
    engine, model, C = make(n_ctx=16, n_batch=16, n_slots=2)
    a, b = list(range(100, 109)), list(range(200, 207))
    for tokens in (a, b):
        j = job(tokens, max_tokens=1)
        engine.add(j)
        run(engine, C, j)
    assert C.used == 16
    model.chain(50, [b"A"])
    model.chain(60, [b"B"])
    a2, b2 = job([*a, 50]), job([*b, 60])
    engine.add(a2)
    engine.add(b2)
    assert (a2.stats.cached_tokens, b2.stats.cached_tokens) == (9, 7)
    run(engine, C, a2, b2)  # no cell is free for either: the one holding more gives way
    assert (a2.stats.finish_reason, a2.stats.completion_tokens, text(a2)) == ("length", 0, "")
    assert (b2.stats.finish_reason, text(b2)) == ("stop", "B")


# -- cancellation, errors, closing ------------------------------------------------
def test_a_cancelled_job_frees_its_slot_before_the_next_decode():
    engine, model, C = make(n_slots=2)
    p, q = job([11, 12]), job([21, 22])
    engine.add(p)
    engine.add(q)
    engine.step()
    engine.step()
    p.cancelled.set()
    n = len(C.decodes)
    engine.step()
    assert C.decodes[n].seqs() == {1}
    assert engine.slots[0].state == IDLE and engine.slots[1].state == GEN
    assert last_event(p) == ("done", p.stats) and p.stats.finish_reason == "cancelled"
    assert len(C.live_samplers) == 1
    consistent(engine, C)


def test_a_job_cancelled_before_its_prompt_is_never_decoded():
    engine, model, C = make()
    j = job([11, 12])
    engine.add(j)
    j.cancelled.set()
    assert not engine.step()
    assert C.decodes == [] and j.stats.finish_reason == "cancelled"


def test_a_decode_error_fails_the_jobs_and_drops_what_reached_the_cache():
    engine, model, C = make(n_slots=2)
    a, b = job([11, 12, 13]), job([21, 22])
    engine.add(a)
    engine.add(b)
    C.fail_next = (-3, 2)  # two tokens land in the cache, then llama.cpp fails
    engine.step()
    for j in (a, b):
        tag, err = last_event(j)
        assert tag == "error" and isinstance(err, ModelError)
        assert str(err) == "llama.cpp failed to evaluate the batch (llama_decode=-3)"
    assert C.cache(0) == [] and C.cache(1) == [] and not C.live_samplers
    assert engine.active == 0


def test_close_cancels_running_jobs_and_frees_everything():
    engine, model, C = make()
    j = job([11, 12])
    engine.add(j)
    engine.step()
    engine.close()
    engine.close()
    assert j.stats.finish_reason == "cancelled" and last_event(j)[0] == "done"
    assert sorted(C.freed) == ["batch", "ctx"] and not C.live_samplers


def test_fail_all_gives_every_running_job_the_error_and_forgets_their_caches():
    engine, model, C = make(n_slots=2)
    a, b = job([11, 12]), job([21, 22])
    engine.add(a)
    engine.add(b)
    engine.step()
    boom = ModelError("the worker died")
    engine.fail_all(boom)
    assert last_event(a) == ("error", boom) and last_event(b) == ("error", boom)
    assert C.cache(0) == C.cache(1) == [] and engine.active == 0


def test_a_context_llama_cpp_cannot_create_is_a_model_error():
    C = FakeLlama()
    C.fail_context = True
    with pytest.raises(ModelError, match="could not create a context of 64 tokens"):
        Engine(FakeModel(C), n_ctx=64, n_threads=1)


def test_the_context_is_made_as_asked():
    engine, model, C = make(n_ctx=48, n_batch=16, n_slots=3)
    p = C.params
    assert (p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max, p.kv_unified) == (48, 16, 16, 3, True)
    assert p.n_threads == p.n_threads_batch == 1


@pytest.mark.parametrize(
    "tokens, message",
    [([], "the prompt is empty"),
     (list(range(100, 132)),
      "the prompt is 32 tokens but the context holds 32; shorten it or raise --ctx-size")],
)  # fmt: skip
def test_a_prompt_that_does_not_fit_is_a_usage_error(tokens, message):
    engine, model, C = make(n_ctx=32)
    j = job(tokens)
    assert engine.add(j)
    tag, err = last_event(j)
    assert tag == "error" and isinstance(err, ContextError) and str(err) == message
    assert engine.slots[0].state == IDLE and not engine.step() and C.decodes == []
    with pytest.raises(ContextError) as info:
        list(engine.generate(job(tokens)))
    assert str(info.value) == message


def test_the_context_llama_cpp_made_is_the_one_prompts_are_checked_against():
    engine, model, C = make(n_ctx=30, n_ctx_pad=2)  # llama.cpp may round n_ctx up
    assert engine.n_ctx == 32
    j = job(range(100, 131))
    engine.add(j)
    run(engine, C, j)
    assert j.stats.finish_reason == "length" and j.stats.completion_tokens == 1


# -- several slots -----------------------------------------------------------------
def test_two_slots_decode_in_one_batch():
    engine, model, C = make(n_slots=2)
    model.chain(12, [b"p1", b"p2"])
    model.chain(22, [b"q1", b"q2", b"q3"])
    p, q = job([11, 12]), job([21, 22])
    assert engine.add(p) and engine.add(q)
    assert engine.active == 2 and not engine.has_idle()
    assert not engine.add(job([31]))  # every slot is busy
    run(engine, C, p, q)
    assert C.decodes[0].seqs() == {0, 1} and len(C.decodes[0].rows) == 4
    assert C.decodes[1].rows == [(0, 2, p_tok(model, b"p1"), True), (1, 2, p_tok(model, b"q1"), True)]
    assert (text(p), text(q)) == ("p1p2", "q1q2q3")
    assert len(C.decodes) == 4


def p_tok(model, piece: bytes) -> int:
    return next(t for t, p in model.pieces.items() if p == piece)


def test_a_new_prompt_joins_the_batch_of_a_running_job():
    engine, model, C = make(n_slots=2, n_batch=4)
    a = job([11, 12])
    engine.add(a)
    engine.step()
    b = job(range(100, 110))
    engine.add(b)
    engine.step()
    rows = C.decodes[-1].rows
    assert [r[0] for r in rows] == [0, 1, 1, 1]  # a's token first, then 3 of b's prompt
    assert engine.slots[1].state == PROMPT and engine.slots[1].done == 3


def test_a_new_prompt_only_gets_the_cells_running_jobs_leave():
    engine, model, C = make(n_ctx=16, n_batch=16, n_slots=2)
    a = job(range(100, 110))  # 10 cells
    engine.add(a)
    engine.step()
    b = job(range(200, 210))
    engine.add(b)
    engine.step()
    assert [r[0] for r in C.decodes[-1].rows] == [0] + [1] * 5  # 16 - 10 held - 1 for a's token
    assert C.decodes[-1].rc == 0


# -- the synchronous driver --------------------------------------------------------
def test_generate_yields_what_add_and_step_give():
    pieces_ = [b"Once", b" upon", b" a", b" t\xc3", b"\xa9me"]
    e1, m1, C1 = make()
    m1.chain(13, pieces_)
    j1 = job([11, 12, 13])
    e1.add(j1)
    run(e1, C1, j1)
    e2, m2, C2 = make()
    m2.chain(13, pieces_)
    j2 = job([11, 12, 13])
    assert list(e2.generate(j2)) == pieces(j1) == ["Once", " upon", " a", " t", "éme"]
    assert j2.stats.completion_tokens == j1.stats.completion_tokens == 5
    assert [d.rows for d in C2.decodes] == [d.rows for d in C1.decodes]
    consistent(e2, C2)


def test_closing_generate_early_cancels_the_job_and_forgets_the_cache():
    engine, model, C = make()
    j = job([11, 12, 13])  # the filler, forever
    it = engine.generate(j)
    assert next(it) == DOT
    it.close()
    assert j.cancelled.is_set() and j.stats.finish_reason == "cancelled"
    assert engine.slots[0].state == IDLE and engine.slots[0].cached == [] and C.cache(0) == []
    assert not C.live_samplers
    model.chain(12, [b"fresh"])
    assert list(engine.generate(job([11, 12]))) == ["fresh"]  # the slot works again


def test_an_exception_inside_generate_cancels_the_job_and_forgets_the_cache():
    engine, model, C = make()
    C.interrupt_at = 3
    j = job([11, 12, 13])
    got = []
    with pytest.raises(Interrupt):
        for piece in engine.generate(j):
            got.append(piece)
    assert got == [DOT, DOT]
    assert j.stats.finish_reason == "cancelled" and engine.slots[0].cached == [] and C.cache(0) == []
    assert engine.slots[0].state == IDLE and not C.live_samplers


def test_generate_needs_an_idle_slot():
    engine, model, C = make()
    engine.add(job([11, 12]))
    with pytest.raises(RuntimeError, match="no idle slot"):
        next(engine.generate(job([21])))


# -- the scheduler -----------------------------------------------------------------
def slots(*specs) -> list[Slot]:
    """Slots from (cached tokens, last_used, busy) triples."""
    out = []
    for i, (cached, used, busy) in enumerate(specs):
        s = Slot(i)
        s.cached, s.last_used, s.state = list(cached), used, GEN if busy else IDLE
        out.append(s)
    return out


def test_pick_prefers_the_longest_common_prefix():
    ss = slots(([1, 2], 1, False), ([1, 2, 3], 9, False), ([], 0, False))
    best, keep = pick(ss, [1, 2, 3, 4])
    assert (best.seq, keep) == (1, 3)


def test_pick_breaks_ties_by_least_recently_used():
    ss = slots(([1, 2, 9], 5, False), ([1, 2, 8], 3, False), ([1, 2, 7], 4, False))
    best, keep = pick(ss, [1, 2, 3])
    assert (best.seq, keep) == (1, 2)


def test_pick_gives_a_prompt_sharing_nothing_the_least_recently_used_slot():
    ss = slots(([5, 6], 2, False), ([7], 1, False))
    best, keep = pick(ss, [1, 2])
    assert (best.seq, keep) == (1, 0)


def test_pick_skips_busy_slots():
    ss = slots(([1, 2, 3], 1, True), ([1], 5, False))
    best, keep = pick(ss, [1, 2, 3, 4])
    assert (best.seq, keep) == (1, 1)


def test_pick_with_every_slot_busy_is_none():
    assert pick(slots(([1], 0, True), ([], 0, True)), [1, 2]) == (None, 0)


@pytest.mark.parametrize(
    "cached, tokens, keep",
    [([1, 2, 3], [1, 2, 3], 2), ([1, 2, 3, 4, 5], [1, 2, 3], 2), ([1], [1], 0), ([1, 2], [2, 1], 0)],
)
def test_pick_always_leaves_a_prompt_token_to_decode(cached, tokens, keep):
    best, got = pick(slots((cached, 0, False)), tokens)
    assert best.seq == 0 and got == keep


def test_the_fake_refuses_what_llama_cpp_refuses():
    """The fake is a model, not a stub: it catches a position gap, a full cache and a
    recurrent cache asked to drop a tail."""
    C = FakeLlama()
    engine = Engine(FakeModel(C), n_ctx=4, n_threads=1, n_batch=4)
    b = engine.batch
    b.token[0], b.pos[0], b.seq_id[0][0], b.logits[0], b.n_tokens = 1, 1, 0, 1, 1
    with pytest.raises(AssertionError, match="not contiguous"):
        C.llama_decode(engine.ptr, b)
    b.pos[0], b.token[1], b.pos[1], b.seq_id[1][0], b.n_tokens = 0, 2, 1, 0, 2
    assert C.llama_decode(engine.ptr, b) == 0 and C.cache(0) == [1, 2]
    for i in range(3):
        b.token[i], b.pos[i], b.seq_id[i][0] = 5, 2 + i, 0
    b.n_tokens = 3
    assert C.llama_decode(engine.ptr, b) == 1 and C.cache(0) == [1, 2]  # 5 cells > 4: unchanged
    C.recurrent = True
    assert not C.llama_memory_seq_rm(engine.mem, 0, 1, -1) and C.cache(0) == [1, 2]
    assert C.llama_memory_seq_rm(engine.mem, 0, -1, -1) and C.cache(0) == []
    assert C.llama_memory_seq_pos_min(engine.mem, 0) == -1
    assert FakeModel().is_eog(EOG) and not FakeModel().is_eog(FILLER)
