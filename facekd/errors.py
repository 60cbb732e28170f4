"""The one exception type the command line turns into a one-line message."""


class FacekdError(Exception):
    """A user-facing error: bad input, a missing file, a failed check.

    The message names the file and the reason; the CLI prints it on one line
    and exits non-zero (with the traceback only under ``--debug``).
    """
