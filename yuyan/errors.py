"""The error a user can cause and fix: the `yuyan` command prints it as one line (exit status 2), no traceback.

Library code raises `ValueError` / `FileNotFoundError` for bad input, as Python does; `CommandError` is for the
failures that are neither (a refused combination of options, a wrapped error whose message is already one line).
"""


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback."""


def one_line(error: BaseException | str) -> str:
    """An error message on one line (transformers' and argparse's messages often span several)."""
    text = str(error).strip() or type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
