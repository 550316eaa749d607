"""Settings in layers, each value tagged with where it came from.

From weakest to strongest: llamabundle's defaults, the model's own GGUF
metadata (``general.sampling.*``), values baked into the bundle at build time,
``LLAMABUNDLE_*`` environment variables, and flags on the command line.

``SETTINGS`` is the one table of settings: the runtime's flags, the environment
variables and the bundler's baked values are all checked against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .errors import UsageError

ENV_PREFIX = "LLAMABUNDLE_"
LAYERS = ("default", "model", "baked", "env", "flag")


@dataclass(frozen=True)
class Setting:
    type: type
    default: object
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()  # the only values allowed, when there is such a list

    def parse(self, name: str, raw: object, where: str) -> object:
        """Convert and range-check a value; errors name the setting and where it came from."""
        try:
            if self.type is bool and isinstance(raw, str):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                value = raw.lower() in ("1", "true", "yes", "on")
            elif self.type is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            elif self.type in (int, float) and isinstance(raw, bool):
                raise ValueError
            else:
                value = self.type(raw)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number", bool: "true or false"}.get(self.type, "text")
            raise UsageError(f"{where}: {name} must be {kind}, not {raw!r}") from None
        if self.choices and value not in self.choices:
            raise UsageError(f"{where}: {name} must be one of {', '.join(self.choices)}, not {raw!r}")
        if self.lo is not None and value < self.lo or self.hi is not None and value > self.hi:
            rng = f"between {self.lo:g} and {self.hi:g}" if self.hi is not None else f"at least {self.lo:g}"
            raise UsageError(f"{where}: {name} must be {rng}, not {raw!r}")
        return value


SETTINGS: dict[str, Setting] = {
    "temp": Setting(float, 0.8, "sampling temperature; 0 is greedy", 0.0, 10.0),
    "top_k": Setting(int, 40, "sample from the K most likely tokens; 0 disables", 0, 1_000_000),
    "top_p": Setting(float, 0.95, "nucleus sampling threshold; 1 disables", 0.0, 1.0),
    "min_p": Setting(float, 0.05, "drop tokens below this fraction of the best; 0 disables", 0.0, 1.0),
    "repeat_penalty": Setting(float, 1.0, "penalty for repeated tokens; 1 disables", 0.0, 10.0),
    "seed": Setting(int, -1, "random seed; -1 picks one at random", -1, 2**32 - 1),
    "n_predict": Setting(int, -1, "tokens to generate; -1 until the model stops", -1, 2**31 - 1),
    "ctx_size": Setting(int, 0, "context size in tokens; 0 picks min(model, 4096)", 0, 2**24),
    "threads": Setting(int, 0, "CPU threads; 0 uses the physical cores", 0, 1024),
    "gpu_layers": Setting(int, -1, "layers to offload to a GPU; -1 all when one is used", -1, 100_000),
    "gpu": Setting(
        str,
        "auto",
        "auto (a GPU only where it is faster), vulkan (insist) or cpu",
        choices=("auto", "vulkan", "cpu"),
    ),
    "rpc": Setting(str, "", "RPC workers to spread the model over: host:port,... (--rpc-worker on each)"),
    "tensor_split": Setting(str, "", "shares of the model: this machine's, then each --rpc worker's (2,1,1)"),
    "parallel": Setting(int, 4, "server slots: requests decoded together", 1, 64),
    "system": Setting(str, "", "system prompt for chat"),
    "name": Setting(str, "", "the bundle's display name (default: the model file's name)"),
    "greeting": Setting(str, "", "first words shown when a chat opens"),
    "chat_template": Setting(str, "", "a Jinja chat template, or a chat format name llama.cpp knows"),
    "host": Setting(str, "127.0.0.1", "address(es) the server listens on, comma-separated"),
    "port": Setting(int, 8080, "server port; if taken, the next free one is used", 0, 65535),
    "api_key": Setting(str, "", "require this key (Authorization: Bearer KEY) for the API"),
    "cors_origins": Setting(str, "", "web origins allowed to call the API (comma-separated, or *)"),
    "max_connections": Setting(
        int, 0, "open connections the server holds; 0: from the file limit, at most 4096", 0, 1_000_000
    ),
    "header_timeout": Setting(float, 10.0, "seconds a request's line and headers may take", 0.1, 3600),
    "body_timeout": Setting(float, 30.0, "seconds a request body may stall", 0.1, 3600),
    "idle_timeout": Setting(float, 15.0, "seconds an idle keep-alive connection stays open", 0.1, 3600),
    "send_timeout": Setting(
        float, 60.0, "seconds a client may stop reading an answer before it is dropped", 0.1, 3600
    ),
}

# GGUF keys a model may carry for its own recommended sampling.
MODEL_KEYS = {
    "temp": "general.sampling.temp",
    "top_k": "general.sampling.top_k",
    "top_p": "general.sampling.top_p",
    "min_p": "general.sampling.min_p",
    "repeat_penalty": "general.sampling.penalty_repeat",
}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def check(values: dict, where: str) -> dict:
    """Validate a dict of settings (unknown keys and bad values are errors)."""
    out = {}
    for key, raw in values.items():
        if key not in SETTINGS:
            known = ", ".join(sorted(SETTINGS))
            raise UsageError(f"{where}: unknown setting {key!r} (known: {known})")
        out[key] = SETTINGS[key].parse(key, raw, where)
    return out


class Settings(Mapping):
    """The effective settings: ``s["temp"]`` is a value, ``s.source("temp")`` the layer it
    came from ("default", "model", "baked", "env" or "flag")."""

    def __init__(self, entries: dict[str, tuple[object, str]]):
        self._entries = dict(entries)

    def __getitem__(self, key: str):
        return self._entries[key][0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def source(self, key: str) -> str:
        return self._entries[key][1]

    def given(self, key: str) -> bool:
        """Whether the user chose this value (anything but llamabundle's default)."""
        return self.source(key) != "default"

    def __repr__(self) -> str:
        return f"Settings({self._entries!r})"


def resolve(
    flags: dict, *, baked: dict | None = None, model_meta: dict | None = None, environ=None
) -> Settings:
    """Effective settings; ``flags`` holds only flags the user gave."""
    environ = os.environ if environ is None else environ
    model_meta = model_meta or {}
    layers = {
        "default": {k: s.default for k, s in SETTINGS.items()},
        "model": {k: model_meta[g] for k, g in MODEL_KEYS.items() if g in model_meta},
        "baked": baked or {},
        "env": {k: environ[env_name(k)] for k in SETTINGS if env_name(k) in environ},
        "flag": flags,
    }
    where = {
        "default": "defaults",
        "model": "the model's metadata",
        "baked": "the bundle's baked settings",
        "env": "environment",
        "flag": "command line",
    }
    out: dict[str, tuple[object, str]] = {}
    for layer in LAYERS:
        for key, raw in layers[layer].items():
            if key not in SETTINGS:
                continue  # baked/model values for settings this runtime does not know
            label = env_name(key) if layer == "env" else where[layer]
            out[key] = (SETTINGS[key].parse(key, raw, label), layer)
    return Settings(out)
