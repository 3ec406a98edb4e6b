"""The error type for bad input.

Anything the user can get wrong about the input files (a file that does not
exist, is empty, is not CSV, lacks a column, holds a non-number where a number
belongs) raises ``InputError`` with a one-line message.  The command line prints
``error: <message>`` on stderr and exits with status 2 -- never a traceback.
"""


class InputError(Exception):
    """A problem with the input files, explained in one line."""

    def __init__(self, message: str):
        # Keep it to one line whatever the cause.
        super().__init__(" ".join(str(message).split()))
