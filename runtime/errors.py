"""llamabundle's errors, for both sides: one base class and one table of exit codes.

Every message is a complete, user-facing sentence that names what is wrong and
how to fix it; it is shown as one line, never as a traceback. The bundler's
errors (bundler/errors.py) derive from these, and ``llamabundle``'s command line
turns them into click errors at the edge, nowhere else. A bundle and
``llamabundle`` therefore exit with the same code for the same kind of failure
(the README's "Exit codes" lists them):

====  ===================================================================
 0    success
 1    any other failure (``Failure`` itself)
 2    a bad flag, setting, value or input file (``UsageError``, ``InputError``)
 3    a bundle that is damaged, cut short or from a newer llamabundle (``PayloadError``)
 4    llama.cpp could not load or run the model (``ModelError``)
 5    not enough memory or disk (``ResourceError``)
 6    the output path cannot be written (``OutputError``, bundler)
 7    the runtime stub could not be built or found (``StubError``, bundler)
 8    an RPC worker cannot be reached, is refused, or went away (``PeerError``)
 70   an internal error (a bug of ours), still one line
 130  interrupted (Ctrl-C);  143  terminated (SIGTERM)
====  ===================================================================
"""


class Failure(Exception):
    """Base class: the message is a complete, user-facing sentence."""

    exit_code = 1


class UsageError(Failure):
    """A bad flag, environment variable, setting or value."""

    exit_code = 2


class PayloadError(Failure):
    """The bundle's payload is missing, damaged or from a newer llamabundle."""

    exit_code = 3


class ModelError(Failure):
    """llama.cpp could not load or run the model."""

    exit_code = 4


class ResourceError(Failure):
    """Not enough memory or disk for what was asked, or no GPU where one was insisted on."""

    exit_code = 5


class PeerError(Failure):
    """An RPC worker that cannot be reached, runs another version, or went away."""

    exit_code = 8


class ContextError(UsageError):
    """A prompt that does not fit the context. One message for every mode."""

    def __init__(self, n_tokens: int, n_ctx: int):
        what = "empty" if n_tokens == 0 else f"{n_tokens} tokens but the context holds {n_ctx}"
        fix = "" if n_tokens == 0 else "; shorten it or raise --ctx-size"
        super().__init__(f"the prompt is {what}{fix}")
        self.n_tokens, self.n_ctx = n_tokens, n_ctx


def check_prompt(n_tokens: int, n_ctx: int) -> None:
    """A prompt must leave at least one cell of the context for the answer."""
    if n_tokens == 0 or n_tokens >= n_ctx:
        raise ContextError(n_tokens, n_ctx)
