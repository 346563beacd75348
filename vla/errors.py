"""Errors a user can fix. The CLI prints them as one line (exit 2); the gRPC server maps them to INVALID_ARGUMENT."""


class UserError(ValueError):
    """A bad input (file, flag, value) named in the message; never a bug in our code."""
