"""The errors that describe bad input or a failed run, and how the command line shows them.

A `LarpError` (or a ValueError, or an OSError such as a missing file) carries a message written for the
user: the command line prints it on one line, without a traceback, and exits with status 1."""

from __future__ import annotations


class LarpError(RuntimeError):
    """A failure whose message tells the user what went wrong and what to do; no traceback needed."""


class CheckpointError(LarpError):
    """A checkpoint folder or file that cannot be used (missing, damaged, or not matching the model)."""


# What a command reports in one line; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (LarpError, ValueError, OSError)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, whatever its own formatting. An error that a DataLoader worker
    raised reaches the main process as torch's text ("Caught X in DataLoader worker process N. Original
    Traceback ... X: message"): its own message is the last line."""
    text = str(exc)
    if text.startswith(f"Caught {type(exc).__name__} in DataLoader worker"):
        marker = f"{type(exc).__name__}: "
        last = next((line for line in reversed(text.splitlines()) if marker in line), "")
        text = last.split(marker, 1)[-1] or text
    return " ".join(text.split()) or type(exc).__name__
