"""``llamabundle inspect``: what a GGUF or a built bundle holds."""

from __future__ import annotations

from pathlib import Path

from runtime.bundle import digest, payload
from runtime.errors import PayloadError

from . import gguf_info
from .errors import InputError
from .inputs import open_input


def _human(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def inspect(path: Path, progress=None) -> dict:
    with open_input(path) as f:
        is_bundle = payload.has_payload(f)
    if is_bundle:
        try:
            b = payload.read_bundle(str(path))
        except PayloadError as e:
            raise InputError(str(e)) from None
        m = b.manifest
        model = {k: v for k, v in m["model"].items() if k != "gguf"}
        model["compressed"] = model["storage"] == "zstd"
        return {"kind": "bundle", "path": str(path), "size": b.file_size, "build": m["build"],
                "stub": m["stub"], "model": model, "gguf": m["model"]["gguf"],
                "settings": m["settings"]}  # fmt: skip
    described = gguf_info.describe(str(path))
    sha = digest.sha256(path, progress=progress)
    return {"kind": "gguf", "path": str(path), "size": described["size"], "sha256": sha,
            "gguf": described["gguf"]}  # fmt: skip


def render(info: dict) -> str:
    g = info["gguf"]
    types = ", ".join(f"{k} x{v}" for k, v in g["tensor_types"].items())
    lines = [f"{info['path']}: {'llamabundle bundle' if info['kind'] == 'bundle' else 'GGUF model'}, "
             f"{_human(info['size'])}"]  # fmt: skip
    if info["kind"] == "gguf":
        lines.append(f"  sha256        {info['sha256']}")
    lines += [
        f"  architecture  {g['architecture']} ({g['name']})",
        f"  parameters    {g['parameters']:,}",
        f"  file type     {g['file_type']} (tensors: {types})",
        f"  context       {g['context_length']:,} tokens (trained)",
        f"  chat template {'yes' if g['chat_template'] else 'no'}",
    ]
    if info["kind"] == "bundle":
        m, stub, build = info["model"], info["stub"], info["build"]
        stored = {
            "embedded": "embedded, mapped in place at run time",
            "zstd": f"zstd-compressed to {_human(m['stored_size'])} "
            f"({m['stored_size'] / m['size']:.0%}), unpacked once on first start",
            "split": f"in {len(m['parts'])} parts beside the executable: "
            + ", ".join(p["file"] for p in m["parts"]),
        }[m["storage"]]
        lines += [
            f"  model         {m['name']}, {_human(m['size'])}, sha256 {m['sha256']}",
            f"  stored        {stored}",
            f"  runtime stub  {stub['os']}-{stub['arch']} ({stub['format']}), {_human(stub['size'])}",
            f"  built by      llamabundle {build['llamabundle']}, build id {build['build_id']}",
            "  baked settings" + ("" if info["settings"] else "  none"),
        ]
        for key, value in info["settings"].items():
            shown = value if key != "chat_template" or len(value) < 60 else f"({len(value)} characters)"
            lines.append(f"    {key} = {shown!r}")
    return "\n".join(lines)
