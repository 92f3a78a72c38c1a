"""The one exception type that reaches a user: a message saying what is wrong, where, and the fix."""


class CleanloopError(Exception):
    """An error the user can act on; the CLI prints its message on one line, with no traceback."""


class WeakModelError(CleanloopError):
    """The model behind the flags is not clearly better than predicting the majority class."""
