"""User-facing errors: one clear line, exit status 2, no traceback.

Raise `UserError` for anything the user can fix (a bad config key, a missing or corrupt file, an
unknown name). Internal invariants stay `assert`s so that real bugs still show a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by input the user controls; its message is shown as one line."""

    def __init__(self, message: str):
        # Keep it to one line whatever the caller built.
        super().__init__(" ".join(str(message).split()))


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid choice closest to `name`, or None when nothing is reasonably close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name_error(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """`unknown dataset 'fashon_mnist'. Did you mean 'fashion_mnist'? Valid: ...`."""
    choices = sorted(choices)
    hint = closest(name, choices)
    did_you_mean = f" Did you mean '{hint}'?" if hint else ""
    return UserError(f"unknown {kind} '{name}'.{did_you_mean} Valid: {', '.join(choices)}")


# What building a model of a config the user chose can raise when the config is too large or
# inconsistent for the tensors it asks for (allocation failed, sizes overflow 64 bits).
MODEL_BUILD_ERRORS = (RuntimeError, MemoryError, OverflowError, ValueError, TypeError)


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (torch adds C++ frames) and `limit` chars."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."
