"""The one exception type for mistakes a user can fix (bad file, column, value, setting), and
how such a message quotes what the user gave.

The CLI prints its message as one red line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class VaecfError(Exception):
    """A user-facing error: the message names the file, column, row or value at fault."""


def printable(value: object, limit: int = 120) -> str:
    """``value`` as text safe to print on one terminal line: control and other non-printable
    characters escaped (``\\x00``, ``\\n``), long values shortened."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
