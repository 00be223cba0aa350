"""The one exception type for bad user input.

Anything the user can fix (a malformed file, a missing column, an unknown option) raises
InputError with a single line naming the file, row or field. The CLI prints it and exits 2;
a Python caller catches it like any other exception.
"""


class InputError(ValueError):
    """Bad input the user can fix; the message is one line naming what and where."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # force one line
