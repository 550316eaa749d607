"""Errors the runtime reports to the user as one line, never as a traceback."""


class RuntimeFailure(Exception):
    """Base class: the message is a complete, user-facing sentence."""

    exit_code = 1


class PayloadError(RuntimeFailure):
    """The bundle's payload is missing, damaged or from a newer llamabundle."""

    exit_code = 3


class UsageError(RuntimeFailure):
    """A bad flag, environment variable or value."""

    exit_code = 2


class ModelError(RuntimeFailure):
    """llama.cpp could not load or run the model."""

    exit_code = 4


class ResourceError(RuntimeFailure):
    """Not enough memory or disk for what was asked."""

    exit_code = 5
