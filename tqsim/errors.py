"""One exception type for user mistakes, so the CLI can print it in one or two lines with exit 2."""


class UserError(Exception):
    """A mistake the user can fix; the message names the fix. Never an internal failure."""
