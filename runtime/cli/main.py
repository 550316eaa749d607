"""The executable's command line: ``./chat [-p PROMPT | --cli | --info] ...``.

Runs inside the bundle. It reads the payload appended to its own executable,
loads the model from it in place and answers. Standard library plus llama.cpp
only: no click, nothing from the bundler.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..bundle import payload
from ..errors import Failure, UsageError

BUNDLE_ENV = "LLAMABUNDLE_BUNDLE"  # run the runtime on a bundle file without freezing it

EXAMPLES = """examples:
  %(prog)s                                        open the web chat in your browser
  %(prog)s --server --port 8080                   serve the OpenAI-compatible API (and the page)
  %(prog)s -p "Why is the sky blue?"              answer once (a chat turn; --raw: plain text)
  %(prog)s -p "A user" --json-schema user.json    answer with JSON that matches the schema
  %(prog)s --cli                                  chat in the terminal
  %(prog)s --info                                 what is inside, and what hardware was found
  %(prog)s --info --json                          the same, as JSON
  %(prog)s --rpc-worker --host 192.168.1.20       lend this machine to a leader (port 50052)
  %(prog)s --rpc 192.168.1.20,192.168.1.21        spread the model over those workers and this machine

Settings come from, weakest first: the model's metadata, values baked in at
build time, LLAMABUNDLE_* environment variables (LLAMABUNDLE_TEMP=0.2, ...),
then these flags.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="A local LLM in one file, built with llamabundle.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=None,
    )
    mode = p.add_argument_group(f"modes (plain {prog} starts the web chat and opens a browser)")
    mode.add_argument("-p", "--prompt", help="print the completion of PROMPT and exit")
    mode.add_argument("--cli", action="store_true", help="chat in the terminal")
    mode.add_argument("--server", action="store_true", help="serve the API and web chat, no browser")
    mode.add_argument("--info", action="store_true", help="show what is inside and the hardware")
    mode.add_argument("--json", action="store_true", help="with --info: print JSON")
    mode.add_argument("--rpc-worker", action="store_true",
                      help="lend this machine's CPU (or GPU) to a leader's --rpc")  # fmt: skip
    mode.add_argument("--version", action="store_true", help="print versions and exit")
    mode.add_argument("--verify", action="store_true",
                      help="check the sha256 of every byte of runtime and model, and exit")  # fmt: skip
    s = p.add_argument_group("settings")
    s.add_argument("-n", "--n-predict", type=int, help="tokens to generate (-1: until the model stops)")
    s.add_argument("--temp", type=float, help="temperature; 0 is greedy and deterministic")
    s.add_argument("--top-k", type=int, help="top-k sampling (0 disables)")
    s.add_argument("--top-p", type=float, help="top-p sampling (1 disables)")
    s.add_argument("--min-p", type=float, help="min-p sampling (0 disables)")
    s.add_argument("--repeat-penalty", type=float, help="repetition penalty (1 disables)")
    s.add_argument("--seed", type=int, help="random seed (-1: random)")
    s.add_argument("-c", "--ctx-size", type=int, help="context size in tokens (0: automatic)")
    s.add_argument("-t", "--threads", type=int, help="CPU threads (0: physical cores)")
    s.add_argument("--gpu", choices=("auto", "vulkan", "cpu"),
                   help="auto: a GPU only where it is faster (default); vulkan: insist; cpu")  # fmt: skip
    s.add_argument("-ngl", "--gpu-layers", type=int, help="layers to put on a GPU (-1: all)")
    s.add_argument("--rpc", metavar="HOST:PORT,...",
                   help="spread the model over these --rpc-worker machines and this one")  # fmt: skip
    s.add_argument(
        "--tensor-split",
        metavar="SHARES",
        help="with --rpc: this machine's share, then each worker's (default: free memory)",
    )
    s.add_argument("-np", "--parallel", type=int, help="server slots: requests decoded together (default 4)")
    s.add_argument("--system", help="system prompt for chat")
    s.add_argument("--host", help="server address(es), comma-separated (default 127.0.0.1; 0.0.0.0 "
                   "exposes it)")  # fmt: skip
    s.add_argument("--port", type=int, help="server port (default 8080, or the next free one)")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on API calls")
    s.add_argument("--cors-origins", metavar="ORIGINS",
                   help="let web pages on these origins call the API (http://host:port,...)")  # fmt: skip
    p.add_argument("--cache-dir", help="where a compressed bundle unpacks its model (default: "
                   "$LLAMABUNDLE_CACHE or ~/.cache/llamabundle)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's own logs")
    p.add_argument("--timings", action="store_true", help="with -p: print speed figures on stderr")
    out = p.add_argument_group("output (with -p and --cli)")
    out.add_argument("--raw", action="store_true",
                     help="with -p: continue PROMPT as plain text, not as a chat turn")  # fmt: skip
    out.add_argument("--json-schema", metavar="FILE|JSON",
                     help="answer with JSON that matches this schema (a file, or the schema)")  # fmt: skip
    out.add_argument("--grammar", metavar="FILE", help="answer in this GBNF grammar (llama.cpp's format)")
    return p


_launched_from: list[str] = []


def bundle_path() -> str:
    if os.environ.get(payload.LAUNCHER_ENV):  # the native launcher's; not for our child processes
        _launched_from[:] = [os.environ.pop(payload.LAUNCHER_ENV)]
    if _launched_from:
        return _launched_from[0]
    if os.environ.get(BUNDLE_ENV):
        return os.environ[BUNDLE_ENV]
    if getattr(sys, "frozen", False):
        return sys.executable
    raise UsageError(f"no bundle to run: run a built executable, or set {BUNDLE_ENV}=PATH")


def _utf8_streams() -> None:
    """Text in and out is UTF-8 everywhere. On Windows a pipe or file gets the ANSI code
    page (cp1252) by default, which cannot hold most of what a model writes: printing
    one such character would end the run (a console is UTF-16 already, and stays so)."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        if stream is not None and (stream.encoding or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(encoding="utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    prog = os.path.basename(sys.argv[0]) or "llamabundle"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _utf8_streams()
    try:
        args = build_parser(prog).parse_args(argv)
        return run(args, prog)
    except Failure as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug of ours: still one line, unless asked for details
        if os.environ.get("LLAMABUNDLE_DEBUG"):
            raise
        print(
            f"{prog}: internal error: {type(e).__name__}: {e} (set LLAMABUNDLE_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 70


def run(args, prog: str) -> int:
    if args.version:
        try:
            b = payload.read_bundle(bundle_path(), check_header=False)
            what = f" ({b.model['name']}, build {b.manifest['build']['build_id']})"
        except Failure:
            what = ""
        from ..llama.backend import llama_version

        print(f"{prog}{what}: llamabundle runtime {__version__}, llama-cpp-python {llama_version()}")
        return 0
    bundle = payload.read_bundle(bundle_path())
    if args.verify:
        return _verify(bundle, prog)
    from ..settings import resolve

    flags = {k: v for k, v in vars(args).items() if v is not None and k in _SETTING_FLAGS}
    settings = resolve(flags, baked=bundle.settings, model_meta=bundle.model["gguf"].get("metadata", {}))
    if args.rpc_worker:
        if args.prompt is not None or args.cli or args.server or args.info or args.rpc:
            raise UsageError("--rpc-worker is a mode of its own: it takes --host, --port, --threads, --gpu")
        from .rpc_worker import run as run_worker

        return run_worker(bundle, settings, verbose=args.verbose)
    if args.info:
        from .info import show_info

        return show_info(bundle, settings, as_json=args.json, verbose=args.verbose)
    if args.json:
        raise UsageError("--json goes with --info")
    if args.prompt is None and not args.cli:
        from ..server.listen import serve

        return serve(bundle, settings, open_browser=not args.server, verbose=args.verbose,
                     cache_dir=args.cache_dir)  # fmt: skip
    from ..llama.job import Sampling
    from ..llama.loading import open_engine
    from .complete import complete, grammar_from

    if args.raw and args.prompt is None:
        raise UsageError("--raw goes with -p")
    grammar = grammar_from(args.json_schema, args.grammar)  # bad ones are refused before loading
    sampling = Sampling.from_settings(settings)
    with open_engine(bundle, settings, verbose=args.verbose, cache_dir=args.cache_dir) as engine:
        from ..llama.templates import Formatter

        formatter = Formatter(engine.model, settings["chat_template"] or None)
        if args.prompt is not None:
            return complete(engine, formatter, sampling, args.prompt, raw=args.raw,
                            system=settings["system"], max_tokens=settings["n_predict"],
                            grammar=grammar, timings=args.timings)  # fmt: skip
        from .chat import run_cli

        return run_cli(
            engine,
            formatter,
            sampling,
            max_tokens=settings["n_predict"],
            system=settings["system"],
            title=settings["name"] or bundle.model["name"],
            greeting=settings["greeting"],
            grammar=grammar,
        )


_SETTING_FLAGS = {
    "n_predict", "temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed",
    "ctx_size", "threads", "gpu_layers", "parallel", "system", "host", "port", "api_key",
    "cors_origins", "gpu", "rpc", "tensor_split",
}  # fmt: skip


def _verify(bundle, prog: str) -> int:
    from ..bundle.verify import total_bytes, verify
    from ..progress import Progress

    with Progress("Verifying", total_bytes(bundle)) as progress:
        checked = verify(bundle, progress)
    print("\n".join(checked))
    print(f"{prog}: OK, every byte matches its sha256 (build {bundle.manifest['build']['build_id']})")
    return 0
