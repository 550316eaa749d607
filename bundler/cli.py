"""``llamabundle``: the build-side command line."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

import runtime
from runtime.bundle import payload

from .errors import Failure, InputError, OutputError

DEFAULT_LEVEL = 9
OSES = ("windows", "linux", "macos")  # bundler.stub.OSES, without importing it (and PyInstaller) early


def _human(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


@contextmanager
def _progress(total: int, label: str):
    """A progress bar on a terminal; silence otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=False) as bar:
        yield bar.update


def _fail(e: Failure):
    """The one place an error of ours becomes click's (same message, same exit code)."""
    err = click.ClickException(str(e))
    err.exit_code = e.exit_code
    return err


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(runtime.__version__, prog_name="llamabundle")
def cli():
    """Ship a local LLM as one self-contained executable.

    \b
    Examples:
      llamabundle build model.gguf -o chat
      ./chat -p "Once upon a time" -n 64 --temp 0
      ./chat --cli
    """


def parse_size(text: str) -> int:
    """'3.5G', '512M', '64K' or a number of bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        n = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size; write it like 2G, 512M or 65536") from None
    if n < 2**16 or n > payload.MAX_FILE:
        raise click.BadParameter("a part must be between 64K and just under 4G")
    return int(n)


SETTING_OPTIONS = [
    click.option("--name", help="Display name of the bundle (web chat, API model id)."),
    click.option("--system", help="System prompt baked in."),
    click.option("--temp", type=float, help="Sampling temperature baked in."),
    click.option("--top-p", type=float, help="Top-p baked in."),
    click.option("--top-k", type=int, help="Top-k baked in."),
    click.option("--repeat-penalty", type=float, help="Repetition penalty baked in."),
    click.option("--ctx-size", type=int, help="Context size baked in."),
    click.option("--threads", type=int, help="CPU threads baked in."),
    click.option("--port", type=int, help="Default server port baked in."),
    click.option("--parallel", type=int, help="Server slots (requests decoded together) baked in."),
    click.option(
        "--chat-template",
        help="A Jinja template file, or a chat format llama.cpp knows (chatml, llama3, mistral-v7, ...).",
    ),  # fmt: skip
    click.option("--greeting", help="First words shown when a chat opens."),
]


def setting_options(f):
    for option in reversed(SETTING_OPTIONS):
        f = option(f)
    return f


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Executable to write [default: dist/MODEL_NAME].")  # fmt: skip
@click.option("--os", "target_os", type=click.Choice(OSES),
              help="The OS to build for [default: windows for a .exe output, else --runtime's or this "
                   "machine's].")  # fmt: skip
@click.option("--runtime", "runtime_stub", type=click.Path(path_type=Path),
              help="Use this prebuilt runtime stub (any OS) instead of this machine's.")  # fmt: skip
@click.option("--config", type=click.Path(path_type=Path),
              help="A bundle.toml of settings to bake in; flags override it.")  # fmt: skip
@setting_options
@click.option("--quantize", "qtype", metavar="TYPE", help="Quantize first (Q4_K_M, Q8_0, ...).")
@click.option("--compress", is_flag=True,
              help="Store the model zstd-compressed (unpacked once on first start).")  # fmt: skip
@click.option("--compress-level", type=click.IntRange(1, 22),
              help="zstd level [default: 9]; implies --compress.")  # fmt: skip
@click.option("--split", is_flag=True,
              help="Keep the weights in parts (each under 4 GiB) beside the executable.")  # fmt: skip
@click.option("--split-size", metavar="SIZE", help="Largest part with --split [default: 3.75G].")
def build(model: Path, output: Path | None, target_os: str | None, runtime_stub: Path | None,
          config: Path | None,
          qtype: str | None, compress: bool, compress_level: int | None, split: bool,
          split_size: str | None, **settings):  # fmt: skip
    """Fuse MODEL (a .gguf file) and the runtime into one executable.

    \b
    Examples:
      llamabundle build stories260K.gguf -o dist/tales
      llamabundle build model.gguf -o chat.exe          # Windows, built on Linux under Wine
      llamabundle build model.gguf -o chat --system "You are terse." --temp 0.3
      llamabundle build model.gguf -o chat --config bundle.toml --compress
      llamabundle build model-f16.gguf -o chat --quantize Q4_K_M
      llamabundle build big.gguf -o chat.exe --runtime runtime-windows.exe --split

    The runtime stub for this machine is built once and cached; later builds
    only append the model, so they take about as long as copying it.
    """
    from . import config as config_mod
    from . import copying, fuse, gguf_info, quantize, stub
    from . import split as split_mod

    try:
        target_os = stub.target_os(target_os, output, runtime_stub)
    except Failure as e:
        raise _fail(e) from None
    if output is None:
        output = Path("dist") / (model.stem + (".exe" if target_os == "windows" else ""))
    if compress_level is not None:
        compress = True
    if compress and (split or split_size):
        raise click.UsageError("--compress and --split do not go together: split parts stay uncompressed")
    part_size = parse_size(split_size) if split_size else (split_mod.DEFAULT_PART if split else None)
    # The model's sha256 is the longest step of a plain build: start it now, on the other
    # core, and it overlaps everything up to and including the copy.
    plain = not (qtype or compress or part_size)
    model_hash = copying.ModelHash.start(model) if plain else None
    try:
        baked = config_mod.baked_settings(config, settings)
        if qtype:
            qtype = quantize.check_type(qtype)
        described = gguf_info.describe(str(model))  # fail fast, before the stub
        tensors = described["gguf"]["tensor_count"]
        fuse.check_output(model, output)
        stub_path = runtime_stub or stub.stub_for(target_os, log=lambda m: click.echo(m, err=True))
        source, tmp = model, None
        try:
            if qtype:
                tmp = _scratch_dir(output)
                source = tmp / f"{model.stem}-{qtype}.gguf"
                with _progress(tensors, f"Quantizing to {qtype}") as update:
                    quantize.quantize(model, source, qtype, _tensor_progress(update))
            label = "Compressing" if compress else "Splitting" if part_size else "Writing"
            with _progress(source.stat().st_size, f"{label} {output.name}") as update:
                result = fuse.fuse(stub_path, source, output, settings=baked,
                                   compress_level=(compress_level or DEFAULT_LEVEL) if compress else None,
                                   split_size=part_size, progress=update,
                                   described=None if qtype else described,
                                   model_hash=model_hash)  # fmt: skip
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
    except Failure as e:
        raise _fail(e) from None
    finally:
        if model_hash:
            model_hash.cancel()  # a no-op once it is done
    notes = list(result.notes)
    if target_os == "windows" and output.suffix.lower() != ".exe":
        notes.append(f"Windows runs only files named .exe: rename it to {output.name}.exe there")
    for note in notes:
        click.echo(f"note: {note}", err=True)
    run = output if output.is_absolute() or output.parent != Path() else Path(".") / output
    parts = result.manifest["model"]["parts"]
    extra = f", plus {len(parts)} model parts beside it" if parts else ""
    kind = result.manifest["stub"]
    where = " on Windows" if target_os == "windows" and stub.host_os() != "windows" else ""
    click.echo(f"Built {output} for {kind['os']}-{kind['arch']} ({_human(result.size)}, build "
               f"{result.build_id}{extra}); run it{where} with: {run} (or {run} --help)")  # fmt: skip


def _scratch_dir(output: Path) -> Path:
    """A temporary directory beside the output (same file system, so renames are atomic)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    except OSError as e:
        raise OutputError(f"cannot write in {output.parent}: {e.strerror}") from None


def _tensor_progress(update):
    """Turn llama.cpp's "[ 12/111] tensor" count into progress bar steps."""
    if update is None:
        return None
    state = {"done": 0}

    def on(done: int, total: int) -> None:
        update(done - state["done"])
        state["done"] = done

    return on


@cli.command("quantize")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--type", "qtype", required=True, metavar="TYPE",
              help="Q4_K_M, Q8_0, Q5_K_M, Q4_0, F16, ... (llama.cpp's names).")  # fmt: skip
def quantize_cmd(src: Path, dst: Path, qtype: str):
    """Quantize a GGUF with llama.cpp's own quantizer.

    \b
    Examples:
      llamabundle quantize model-f16.gguf model-q4.gguf --type Q4_K_M
      llamabundle quantize model-f32.gguf model-q8.gguf --type Q8_0
    """
    from . import gguf_info, quantize

    try:
        tensors = gguf_info.describe(str(src))["gguf"]["tensor_count"]
        with _progress(tensors, f"Quantizing to {qtype.upper()}") as update:
            quantize.quantize(src, dst, qtype, _tensor_progress(update))
    except Failure as e:
        raise _fail(e) from None
    click.echo(f"Wrote {dst} ({_human(dst.stat().st_size)}, {qtype.upper()})")


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(path: Path, as_json: bool):
    """Show what a GGUF model or a built bundle holds.

    \b
    Examples:
      llamabundle inspect model.gguf
      llamabundle inspect dist/tales --json
    """
    from . import report

    try:
        size = path.stat().st_size if path.exists() else 0
        with _progress(size, "Hashing") as update:
            info = report.inspect(path, update)
    except Failure as e:
        raise _fail(e) from None
    click.echo(json.dumps(info, indent=2, sort_keys=True) if as_json else report.render(info))


@cli.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
def verify_cmd(bundle: Path):
    """Check every byte of a bundle (runtime and model) against its sha256.

    \b
    Examples:
      llamabundle verify dist/tales
      ./tales --verify          # the same check, by the bundle itself
    """
    from runtime.bundle import verify

    try:
        b = payload.read_bundle(str(bundle))
        with _progress(verify.total_bytes(b), f"Verifying {bundle.name}") as update:
            checked = verify.verify(b, update or (lambda n: None))
    except Failure as e:  # a damaged bundle exits 3, as the bundle's own --verify does
        raise _fail(e) from None
    except OSError as e:
        raise _fail(InputError(f"cannot read {bundle}: {e.strerror}")) from None
    click.echo("\n".join(checked))
    click.echo(f"{bundle}: OK, every byte matches its sha256 (build {b.manifest['build']['build_id']})")


@cli.command("stub")
@click.option("--os", "target_os", type=click.Choice(OSES), help="The OS to build for [default: this one].")
@click.option("--rebuild", is_flag=True, help="Build it again even if it is cached.")
def stub_cmd(target_os: str | None, rebuild: bool):
    """Build (or find) a cached runtime stub and print its path.

    On Linux, --os windows builds the Windows stub under Wine with mingw-w64
    (Debian's wine, gcc-mingw-w64-x86-64-posix, ninja-build, osslsigncode):
    about 10 minutes the first time on 2 cores, cached afterwards.

    \b
    Examples:
      llamabundle stub
      llamabundle stub --os windows
      llamabundle stub --rebuild
      cp "$(llamabundle stub)" runtime-linux-x86_64   # to fuse on another machine
    """
    from . import stub

    try:
        path = stub.stub_for(target_os or stub.host_os(), rebuild=rebuild,
                             log=lambda m: click.echo(m, err=True))  # fmt: skip
    except Failure as e:
        raise _fail(e) from None
    click.echo(str(path))


def main() -> None:
    """The console script: click's own errors stay one line, and so does anything unexpected."""
    try:
        cli.main(standalone_mode=True)
    except Exception as e:  # a bug of ours: one line unless asked for details
        if os.environ.get("LLAMABUNDLE_DEBUG"):
            raise
        click.echo(f"Error: internal error: {type(e).__name__}: {e} (set LLAMABUNDLE_DEBUG=1 for details)",
                   err=True)  # fmt: skip
        sys.exit(70)
