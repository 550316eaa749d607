"""Damaged bundles and models: a fixed, seeded corpus of truncations and bit flips.

Every case must end in a clear refusal (PayloadError / InputError, one line from
the executables) or, where the damage is harmless or only in the weights, in a
normal start, and then a failed full verify whenever the damaged bytes are covered
by a hash. Nothing may crash or hang.
"""

from __future__ import annotations

import random
import subprocess

import pytest

from bundler import fuse, gguf_info
from bundler.errors import InputError
from conftest import PROMPT
from runtime.bundle import payload, verify
from runtime.errors import PayloadError

SEED = 20261121
CASES = 200


def _region(b: payload.Bundle, pos: int) -> str:
    m = b.model
    if pos < b.payload_start:
        return "stub"
    if pos < m["offset"]:
        return "padding"
    if pos < m["offset"] + m["header_size"]:
        return "header"
    if pos < m["offset"] + m["size"]:
        return "weights"
    return "manifest"  # the manifest, the launcher tail and the trailer


def _corpus(b: payload.Bundle, size: int):
    """CASES (kind, position) pairs, spread evenly over the bundle's regions."""
    m = b.model
    bounds = [0, b.payload_start, m["offset"], m["offset"] + m["header_size"], m["offset"] + m["size"], size]
    regions = [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]
    rng = random.Random(SEED)
    for i in range(CASES):
        lo, hi = regions[(i // 2) % len(regions)]
        yield ("truncate" if i % 2 else "flip"), rng.randrange(lo, hi)


def test_damaged_bundles_are_refused_or_caught_by_verify(dummy_stub, model, tmp_path):
    good = fuse.fuse(dummy_stub, model, tmp_path / "good").path
    data = good.read_bytes()
    intact = payload.read_bundle(str(good))
    outcomes = {}
    for kind, pos in _corpus(intact, len(data)):
        bad = tmp_path / "bad"
        if kind == "truncate":
            bad.write_bytes(data[:pos])
        else:
            flipped = bytearray(data)
            flipped[pos] ^= 1 << (pos % 8)
            bad.write_bytes(flipped)
        region = _region(intact, pos)
        try:
            b = payload.read_bundle(str(bad))
        except PayloadError as e:
            assert "\n" not in str(e)
            outcome = "refused"
        else:
            assert kind == "flip" and region in ("stub", "padding", "weights"), (kind, pos, region)
            try:
                verify.verify(b)
                outcome = "verified"
            except PayloadError:
                outcome = "verify caught it"
            # a flip in bytes a hash covers is always caught; padding is covered by none
            assert outcome == ("verified" if region == "padding" else "verify caught it"), (pos, region)
        outcomes[(kind, region, outcome)] = outcomes.get((kind, region, outcome), 0) + 1
    assert sum(outcomes.values()) == CASES
    assert all(o == "refused" for (k, _, o) in outcomes if k == "truncate")
    assert ("flip", "header", "refused") in outcomes and ("flip", "manifest", "refused") in outcomes


def test_damaged_models_are_refused_by_the_bundler(model, tmp_path):
    data = model.read_bytes()
    rng = random.Random(SEED)
    refused = accepted = 0
    for i in range(CASES):
        bad = tmp_path / "bad.gguf"
        pos = rng.randrange(len(data))
        if i % 2:
            bad.write_bytes(data[:pos])
        else:
            flipped = bytearray(data)
            flipped[pos] ^= 0xFF
            bad.write_bytes(flipped)
        try:
            gguf_info.describe(str(bad))
            accepted += 1  # a flip in the weights leaves a well-formed GGUF
        except InputError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused + accepted == CASES and refused >= CASES // 2  # every truncation, at least


@pytest.mark.e2e
def test_the_executable_never_crashes_on_a_damaged_bundle(bundle, tmp_path):
    data = bundle.read_bytes()
    b = payload.read_bundle(str(bundle))
    rng = random.Random(SEED)
    model_end = b.model["offset"] + b.model["size"]
    spots = [("truncate", rng.randrange(b.payload_start, len(data))) for _ in range(6)]
    spots += [("flip", rng.randrange(b.model["offset"], model_end)) for _ in range(6)]
    spots += [("flip", rng.randrange(model_end, len(data))) for _ in range(3)]
    for kind, pos in spots:
        bad = tmp_path / "tales"
        blob = bytearray(data[:pos] if kind == "truncate" else data)
        if kind == "flip":
            blob[pos] ^= 0x10
        bad.write_bytes(blob)
        bad.chmod(0o755)
        proc = subprocess.run([str(bad), "-p", PROMPT, "-n", "4", "--temp", "0"], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert proc.returncode in (0, 3), (kind, pos, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr
        if proc.returncode:
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        check = subprocess.run([str(bad), "--verify"], capture_output=True, text=True, timeout=60)
        assert check.returncode != 0 and "Traceback" not in check.stderr, (kind, pos)
