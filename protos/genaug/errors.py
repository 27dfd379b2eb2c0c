"""Errors every layer may raise, with no transport attached.

They subclass the built-in exceptions whose meaning they share (`ValueError` for bad input,
`LookupError` for something missing, `TimeoutError` for a spent budget), so the data and model
layers raise them without knowing about gRPC. The server runtime maps each class to a status
code in one place (`services.common.errors.status_of`); the CLI maps them to exit messages.
"""

from __future__ import annotations


class GenaugError(Exception):
    """Base of every error that names a caller-side or operational condition, not a bug."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(GenaugError, ValueError):
    """Bad input; the message starts with the offending field (`frames.shape: ...`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(GenaugError, LookupError):
    """A named thing (file, model, class, request id) does not exist."""


class ResourceExhausted(GenaugError):
    """Queue full or request too large; `retry_after_s` is a hint sent back to the caller."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(GenaugError):
    """Not ready, draining, or a downstream hop is down; safe for the caller to retry."""


class FailedPrecondition(GenaugError):
    """The input is well formed but the system is not in a state to handle it."""


class DeadlineExceeded(GenaugError, TimeoutError):
    """The caller's time budget ran out between two units of work."""


class Cancelled(GenaugError):
    """The caller cancelled or went away."""


class PermissionDenied(GenaugError):
    """The caller is known but may not do this (from where it calls, or with what it holds)."""


class Unauthenticated(GenaugError):
    """No valid credentials came with the call."""


class Unimplemented(GenaugError):
    """The call names a feature this server does not provide."""
