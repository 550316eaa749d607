"""``llamabundle``: the build-side command line."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import click

import runtime

from .errors import BundlerError


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


def _fail(e: BundlerError):
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


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Executable to write [default: dist/MODEL_NAME].")  # fmt: skip
@click.option("--runtime", "runtime_stub", type=click.Path(path_type=Path),
              help="Use this prebuilt runtime stub (any OS) instead of this machine's.")  # fmt: skip
def build(model: Path, output: Path | None, runtime_stub: Path | None):
    """Fuse MODEL (a .gguf file) and the runtime into one executable.

    \b
    Examples:
      llamabundle build stories260K.gguf -o dist/tales
      llamabundle build model.gguf -o chat.exe --runtime llamabundle-runtime-windows.exe

    The runtime stub for this machine is built once and cached; later builds
    only append the model, so they take about as long as copying it.
    """
    from . import fuse, gguf_info, stub

    if output is None:
        output = Path("dist") / model.stem
    try:
        gguf_info.describe(str(model))  # fail fast, before any stub build
        fuse.check_output(model, output)
        stub_path = runtime_stub or stub.cached_stub(log=lambda m: click.echo(m, err=True))
        size = model.stat().st_size
        with _progress(size, f"Writing {output.name}") as update:
            result = fuse.fuse(stub_path, model, output, progress=update)
    except BundlerError as e:
        raise _fail(e) from None
    run = output if output.is_absolute() or output.parent != Path() else Path(".") / output
    click.echo(
        f"Built {output} ({_human(result.size)}, sha256 {result.sha256}); "
        f"run it with: {run} (or {run} --help)"
    )


@cli.command("stub")
@click.option("--rebuild", is_flag=True, help="Build it again even if it is cached.")
def stub_cmd(rebuild: bool):
    """Build (or find) this machine's cached runtime stub and print its path.

    \b
    Examples:
      llamabundle stub
      llamabundle stub --rebuild
      cp "$(llamabundle stub)" runtime-linux-x86_64   # to fuse on another machine
    """
    from . import stub

    try:
        path = stub.cached_stub(rebuild=rebuild, log=lambda m: click.echo(m, err=True))
    except BundlerError as e:
        raise _fail(e) from None
    click.echo(str(path))


main = cli
