"""The one exception type for user-facing errors, shared by the application and media."""


class CLIError(Exception):
    """A user-facing error: one paragraph saying what is wrong (file / key / value) and what to do."""
