"""The one exception type that reaches a user: a message saying what is wrong, where, and the fix."""


class CleanloopError(Exception):
    """An error the user can act on; the CLI prints its message on one line, with no traceback."""


def not_utf8(path) -> CleanloopError:
    """The error for a text file that is not UTF-8, naming the line and byte of the first bad one."""
    from pathlib import Path

    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
        pos = 0
    except UnicodeDecodeError as exc:
        pos = exc.start
    line = data.count(b"\n", 0, pos) + 1
    return CleanloopError(
        f"{path}: line {line} is not UTF-8 text (byte 0x{data[pos]:02x} at offset {pos}); "
        f"fix: save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > {Path(path).stem}.utf8{Path(path).suffix}"
    )


class WeakModelError(CleanloopError):
    """The model behind the flags is not clearly better than predicting the majority class."""
