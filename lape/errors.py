"""The one error type of lape.

Every message is one line that names the input that was wrong and how to fix it.
"""


class LapeError(Exception):
    """A user-facing error: bad input, a missing file, a mismatched model.

    The CLI prints the message (no traceback) and exits with status 2.
    """
