"""Exceptions a user can cause. Each message names the bad value.

HTTP status codes live only in the API layer; the CLI prints these as one line.
"""


class TwinLoopError(Exception):
    """Base of every error caused by input, configuration or stored state."""


class ConfigError(TwinLoopError):
    """A setting is missing, malformed or out of range."""


class ModelLoadError(TwinLoopError):
    """A base model or embedder could not be found or loaded."""


class IntegrityError(TwinLoopError):
    """A stored file failed its SHA-256 check or is unreadable."""


class InvalidInputError(TwinLoopError):
    """A request or document is malformed (empty text, bad date, unknown field)."""


class UnknownDomainError(InvalidInputError):
    """A domain name that is not configured."""


class UnknownRequestError(InvalidInputError):
    """A request id that was never answered here (feedback on it has nothing to rate)."""
