"""Settings baked into a bundle: from ``--config bundle.toml`` and build flags.

Every key is checked here, at build time, against the runtime's own table of
settings (``runtime.settings.SETTINGS``): an unknown key or an out-of-range
value is a build error naming the key, never a surprise when the bundle runs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from runtime.errors import UsageError
from runtime.settings import check

from .errors import InputError
from .inputs import open_input


def load_toml(path: Path) -> dict:
    try:
        with open_input(path, "config file") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path} is not valid TOML: {e}") from None
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            raise InputError(f"{path}: [{key}] tables are not supported; put every setting at the top level")
        out[key.replace("-", "_")] = value
    return out


def baked_settings(config: Path | None, flags: dict) -> dict:
    """The settings to bake: the config file's, overridden by flags, all checked."""
    values = load_toml(config) if config else {}
    where = {k: str(config) for k in values}
    for key, value in flags.items():
        if value is not None:
            values[key], where[key] = value, "command line"
    out = {}
    for key, value in values.items():
        try:
            out.update(check({key: value}, where[key]))
        except UsageError as e:
            raise InputError(str(e)) from None
    if out.get("chat_template"):
        out["chat_template"] = chat_template(out["chat_template"], where["chat_template"])
    return dict(sorted(out.items()))


def chat_template(value: str, where: str) -> str:
    """A chat template file's text, or a chat format name llama.cpp knows."""
    from runtime.llama.templates import compile_template, named_formats

    names = named_formats()
    if value in names:
        return value
    path = Path(value).expanduser()
    looks_like_template = "{{" in value or "{%" in value
    if not looks_like_template:
        if not path.is_file():
            raise InputError(
                f"{where}: chat_template {value!r} is neither a template file nor a chat format "
                f"llama.cpp knows ({', '.join(names)})"
            )
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: cannot read chat template {path}: {e}") from None
    try:
        compile_template(value)  # the runtime's own renderer: what builds, renders
    except UsageError as e:
        raise InputError(f"{where}: {e}") from None
    return value
