"""The one exception type that the command line turns into a one-line message."""


class DiffheadsError(Exception):
    """A user-facing failure: the message says what is wrong and what to do."""
