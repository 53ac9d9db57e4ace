"""How a user's mistake reaches the user: one family of exceptions, and the guard every command runs in.

A :class:`UserError` is something the person running siamax can fix: a missing or corrupt data file,
a bad config value, a work directory that holds another run, a checkpoint that cannot be restored.
Its message is complete (what was found, what was expected, what to do). Commands print it as one
``error: ...`` line and exit with status 2. Any other exception is a bug in siamax and keeps its
traceback.

Each subclass also derives from the built-in exception a caller would expect (``ValueError`` for a
bad value, ``FileNotFoundError`` for a missing file), so library users can catch either.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
    """A config value, preset or combination of settings that siamax refuses."""


class DataError(UserError, FileNotFoundError):
    """A data file that is missing and cannot be downloaded, or a data folder that does not exist."""


class ChecksumError(UserError, ValueError):
    """A data file whose sha256 differs from the published one."""


class WorkdirError(UserError, ValueError):
    """A work directory that holds a different run, or cannot be used."""


class CheckpointError(UserError, RuntimeError):
    """No checkpoint of a run can be restored (the message lists each one and why)."""


class ModelError(UserError, ValueError):
    """A file that is not a siamax model, or a model that does not fit what it is asked to do."""


class InputError(UserError, ValueError):
    """Images, embeddings or arguments of a public function with a bad shape, size or value."""


class InputTypeError(UserError, TypeError):
    """An argument of a public function of the wrong type (e.g. params that are not ``siamax.Params``)."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says what was kept."""


def one_line(message: str) -> str:
    """``message`` with its lines joined by "; " (a command's error is a single line)."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def guard(main: Callable[[Sequence[str] | None], int | None]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a command's ``main(argv)``: a :class:`UserError` becomes ``error: ...`` on stderr and exit 2."""

    @functools.wraps(main)
    def guarded(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return EXIT_USER_ERROR

    return guarded
