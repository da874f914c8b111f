"""Ctrl-C and SIGTERM end a run as ``interrupted``, with what it logged kept.

``lawn-monitor train`` and an in-process sweep run inside ``interrupt_on_signals()``: the first
SIGINT or SIGTERM raises ``Interrupted`` (a KeyboardInterrupt, which the training loop already
turns into ``Monitor.close("interrupted")``), and every signal after it is ignored, so that a
second one cannot cut that cleanup short. Two arrive often: a terminal's Ctrl-C reaches every
process of its group, and ``make demo`` and ``lawn-monitor sweep --parallel`` forward their own.

Where a signal must not land (between writing a run's record and holding the object that can
close it, or while the status is being written), the code runs ``with held():`` and the signal
takes effect when the block ends. Outside ``interrupt_on_signals()`` (the library, tests) these
are no-ops and Python's own Ctrl-C handling applies.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """The shell's code for death by this signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


class _Guard:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self.holding = 0

    def handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            return  # already stopping: let the first one finish its cleanup
        self.signum = signum
        if not self.holding:
            raise Interrupted(signum)


_guard: _Guard | None = None


@contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` (once) while the block runs. After a signal the
    two stay ignored when the block ends: the process is on its way out, and a second signal
    (the one forwarded after the terminal's) must not cut short its last lines."""
    global _guard
    if threading.current_thread() is not threading.main_thread():  # signal.signal works only there
        yield
        return
    outer, guard = _guard, _Guard()
    _guard = guard
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, guard.handle)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if guard.signum is not None else handler)
        _guard = outer


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (a process that is stopping after one)."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextmanager
def held(deliver: bool = True) -> Iterator[None]:
    """A signal that arrives in this block is kept until it ends; then ``Interrupted`` is raised
    (``deliver=False``: only recorded, see ``received``)."""
    guard = _guard
    if guard is None:
        yield
        return
    guard.holding += 1
    try:
        yield
    finally:
        guard.holding -= 1
    if deliver and not guard.holding and guard.signum is not None:
        raise Interrupted(guard.signum)


def received() -> int | None:
    """The signal received so far under ``interrupt_on_signals()``, if any."""
    return None if _guard is None else _guard.signum
