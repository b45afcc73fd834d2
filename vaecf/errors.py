"""The one exception type for mistakes a user can fix (bad file, column, value, setting).

The CLI prints its message as one red line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class VaecfError(Exception):
    """A user-facing error: the message names the file, column, row or value at fault."""
