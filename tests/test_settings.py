"""Settings in layers: flags > LLAMABUNDLE_* > baked > model metadata > defaults."""

import pytest

from runtime.errors import UsageError
from runtime.settings import SETTINGS, check, resolve


def test_each_layer_beats_the_one_below():
    meta = {"general.sampling.temp": 0.5, "general.sampling.top_k": 7}
    baked = {"temp": 0.4, "top_p": 0.5, "seed": 3}
    env = {"LLAMABUNDLE_TEMP": "0.3", "LLAMABUNDLE_SEED": "4"}
    got = resolve({"temp": 0.2}, baked=baked, model_meta=meta, environ=env)
    assert (got["temp"], got.source("temp")) == (0.2, "flag")
    assert (got["seed"], got.source("seed")) == (4, "env")
    assert (got["top_p"], got.source("top_p")) == (0.5, "baked")
    assert (got["top_k"], got.source("top_k")) == (7, "model")
    assert (got["min_p"], got.source("min_p")) == (SETTINGS["min_p"].default, "default")


def test_bad_environment_value_names_the_variable():
    with pytest.raises(UsageError, match="LLAMABUNDLE_TEMP: temp must be a number, not 'hot'"):
        resolve({}, environ={"LLAMABUNDLE_TEMP": "hot"})


def test_out_of_range_is_refused():
    with pytest.raises(UsageError, match="top_p must be between 0 and 1"):
        resolve({"top_p": 1.5}, environ={})


def test_unknown_key_is_named():
    with pytest.raises(UsageError, match="unknown setting 'tempreature'"):
        check({"tempreature": 1}, "bundle.toml")


def test_integer_settings_refuse_fractions():
    with pytest.raises(UsageError, match="must be an integer"):
        check({"top_k": 2.5}, "bundle.toml")


def test_context_plan_shrinks_to_fit_and_refuses_when_nothing_fits():
    from runtime.errors import ResourceError
    from runtime.llama.memory import OVERHEAD, kv_cache_bytes, plan_context

    gguf = {
        "context_length": 8192,
        "shape": {"block_count": 32, "head_count": 32, "head_count_kv": 8, "embedding_length": 4096},
    }
    model = {"name": "m.gguf", "size": 4 << 30, "gguf": gguf}
    assert kv_cache_bytes(gguf, 4096) == 4096 * 32 * 8 * 256 * 2  # llama-3-8B-like: 512 MiB
    roomy = model["size"] + kv_cache_bytes(gguf, 4096) + OVERHEAD
    assert plan_context(model, 0, available=roomy) == 4096
    assert plan_context(model, 0, available=roomy - 1) == 2048  # halved until it fits
    with pytest.raises(ResourceError, match="try --ctx-size 2048"):
        plan_context(model, 4096, available=roomy - 1)
    with pytest.raises(ResourceError, match="too big for this machine"):
        plan_context(model, 0, available=2 << 30)
