"""Stop strings over streamed text (runtime/llama/stops.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.llama.stops import StopStrings


def stream(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    """What is shown after each piece, then the flush at the end (only when no stop hit)."""
    s = StopStrings(stops)
    out = [s.feed(p) for p in pieces]
    if not s.hit:
        out.append(s.flush())
    return out, s.hit


def test_a_stop_spanning_pieces_ends_the_text_before_it():
    out, hit = stream(["<|end|>"], ["Hello", " <|e", "nd", "|> more"])
    assert hit and "".join(out) == "Hello "
    assert out == ["Hello", " ", "", ""]  # only what may start the stop is held: "<|e", "<|end" never show


def test_the_earliest_of_several_stops_wins():
    out, hit = stream(["world", "lo"], ["Hel", "lo world"])
    assert hit and "".join(out) == "Hel"
    out, hit = stream(["zz", "b"], ["a", "bzz"])
    assert "".join(out) == "a"


def test_the_earliest_wins_even_when_a_later_stop_is_listed_first():
    s = StopStrings(["cd", "ab"])
    assert s.feed("xabcd") == "x" and s.hit


def test_held_text_is_flushed_at_the_end():
    s = StopStrings(["STOP"])
    assert s.feed("abc") == "abc"
    assert s.feed("ST") == ""
    assert s.flush() == "ST" and not s.hit
    assert s.flush() == ""  # flushed once


def test_no_stops_pass_everything_through_at_once():
    s = StopStrings([])
    assert [s.feed(p) for p in ["a", "bc", ""]] == ["a", "bc", ""]
    assert s.flush() == "" and not s.hit and s.longest == 0


def test_empty_stop_strings_are_ignored():
    s = StopStrings(["", "x"])
    assert s.stops == ["x"] and s.feed("ab") == "ab"


def test_a_stop_at_the_very_start_shows_nothing():
    out, hit = stream(["Hi"], ["Hi there"])
    assert hit and out == [""]


def test_nothing_after_a_stop_is_ever_shown():
    s = StopStrings(["."])
    assert s.feed("one. two") == "one"
    assert s.feed("three") == "" and s.feed(".") == ""
    assert s.hit


@pytest.mark.parametrize(
    "piece, shown, held",
    [("abc", "abc", ""), ("abx", "ab", "x"), ("abxy", "ab", "xy"), ("xyx", "xy", "x"), ("aq", "a", "")],
)
def test_only_a_tail_that_may_start_a_stop_is_held(piece, shown, held):
    s = StopStrings(["xyz", "q"])
    assert s.feed(piece) == shown
    assert s.held == held


alphabet = st.sampled_from("abAB<|>é ")  # few letters: stops occur often


@given(text=st.text(alphabet, max_size=40), stops=st.lists(st.text(alphabet, min_size=1, max_size=4),
       max_size=3), cuts=st.lists(st.integers(0, 40), max_size=10))  # fmt: skip
def test_any_split_shows_the_text_up_to_the_first_stop(text, stops, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    out, hit = stream(stops, pieces)
    found = [text.find(s) for s in stops if s in text]
    if found:
        assert hit and "".join(out) == text[: min(found)]
    else:
        assert not hit and "".join(out) == text
