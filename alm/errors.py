"""The one exception type for a user's mistake: bad input, a missing file, a wrong option.

`alm` prints a UserError as one line (`alm <command>: <message>`) and exits with status 2 — no
traceback. Its message names the thing (file, key, flag) and what was expected or how to fix it.
Everything else is a bug or an environment failure and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user's mistake, reported in one line by the CLI."""
