"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class RddError(Exception):
    """A user-facing error: bad input whose message names the problem and the fix."""
