"""The bundler's errors. Each message is one complete sentence naming the file
and the fix; the CLI turns them into click errors at the edge, nowhere else."""


class BundlerError(Exception):
    exit_code = 1


class InputError(BundlerError):
    """The model or stub given to us is missing, unreadable or not what it claims."""

    exit_code = 2


class OutputError(BundlerError):
    """The output path cannot be written."""

    exit_code = 3


class StubError(BundlerError):
    """The runtime stub could not be built or found."""

    exit_code = 4
