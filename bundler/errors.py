"""The bundler's errors: the runtime's error classes (runtime/errors.py, which holds
the one table of exit codes) plus three of the build side's own. Each message is
one complete sentence naming the file and the fix; the CLI turns them into click
errors at the edge, nowhere else."""

from runtime.errors import Failure, PayloadError, UsageError

__all__ = ["Failure", "PayloadError", "UsageError", "InputError", "OutputError", "StubError"]


class InputError(UsageError):
    """The model or stub given to us is missing, unreadable or not what it claims."""


class OutputError(Failure):
    """The output path cannot be written."""

    exit_code = 6


class StubError(Failure):
    """The runtime stub could not be built or found."""

    exit_code = 7
