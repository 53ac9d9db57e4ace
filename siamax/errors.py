"""How a user's mistake reaches the user: one family of exceptions, and the guard every command runs in.

A :class:`UserError` is something the person running siamax can fix: a missing or corrupt data file,
a bad config value, a work directory that holds another run, a checkpoint that cannot be restored.
Its message is complete (what was found, what was expected, what to do). Commands print it as one
``error: ...`` line and exit with status 2. Any other exception is a bug in siamax and keeps its
traceback.

Each subclass also derives from the built-in exception a caller would expect (``ValueError`` for a
bad value, ``FileNotFoundError`` for a missing file), so library users can catch either.

Ctrl-C (``KeyboardInterrupt``) is the guard's too: one ``interrupted: ...`` line saying how to carry
on, exit status 130 (128 + SIGINT, what a shell reports for a process Ctrl-C stopped), and no
traceback; a second Ctrl-C while the process winds down ends it at once. Checkpoint writes and reads
run under :func:`deferred_interrupt`: a Ctrl-C then takes effect when the write is complete (a second
one at once), so orbax's writer threads are never cut off mid-file (they would print pages of
tracebacks); and should a process die mid-write anyway, orbax writes each checkpoint into a
temporary folder that it renames into place when complete, which a resume never takes for a step.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
RESUME = "stopped by Ctrl-C; rerun the same command to resume (training carries on from its last saved epoch)"
RESTART = "stopped by Ctrl-C; rerun the same command to start it again"


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


def guard(
    main: Callable[[Sequence[str] | None], int | None] | None = None,
    *,
    interrupted: str | Callable[[list[str]], str] = RESUME,
):
    """Wrap a command's ``main(argv)``: a :class:`UserError` becomes ``error: ...`` on stderr and exit 2;
    Ctrl-C becomes ``interrupted: <interrupted>`` on stderr and exit 130 (``interrupted``: the line, or
    a function of the arguments giving it; by default it says that rerunning the command resumes).
    Any other exception keeps its traceback. ``@guard`` and ``@guard(interrupted=...)`` both work."""
    if main is None:
        return functools.partial(guard, interrupted=interrupted)

    @functools.wraps(main)
    def guarded(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            _second_interrupt_kills()
            args = list(sys.argv[1:] if argv is None else argv)
            hint = interrupted(args) if callable(interrupted) else interrupted
            print(f"\ninterrupted: {one_line(hint)}", file=sys.stderr)  # after a half-drawn progress bar
            return EXIT_INTERRUPTED

    return guarded


def _second_interrupt_kills() -> None:
    """While the interrupted process winds down (orbax finishing a write, JAX's exit hooks), a second
    Ctrl-C ends it at once, without a traceback."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except ValueError:  # not the main thread: signals are not ours to set
        pass


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block ends, then act on it as
    the handler in place before would have (``KeyboardInterrupt`` by default). A second Ctrl-C inside
    the block acts at once (a write that hangs can still be stopped). Outside the main thread, where
    signals cannot be handled, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []

    def hold(signum, frame):
        if held:
            signal.signal(signal.SIGINT, previous)
            _act(previous, signum, frame)
        held.append((signum, frame))

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is hold:
            signal.signal(signal.SIGINT, previous)
    if held:
        _act(previous, *held[0])


def _act(handler, signum, frame) -> None:
    if callable(handler):
        handler(signum, frame)  # signal.default_int_handler raises KeyboardInterrupt
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
    # SIG_IGN (or None: set outside Python): nothing to do
