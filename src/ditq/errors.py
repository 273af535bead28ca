"""The two exceptions users see: a bad input (exit 1) and a failed check (exit 3)."""


class DitqError(Exception):
    """A user-facing error: one sentence saying what went wrong, the bad value, and the fix."""


class CheckFailed(DitqError):
    """A numerical check (validation threshold, bench gate) did not pass."""
