"""Ctrl-C and SIGTERM for the binaries that stop where they are (all but pcam-train, which saves
a checkpoint first: ``runtime.preemption``).

``stop_on_signals()`` installs, for the duration of a block, a handler for SIGTERM and SIGINT
that records the signal and raises ``Stopped`` (a KeyboardInterrupt), so that both unwind the
same way and every ``finally`` removes what was not finished. Python runs a handler wherever
the main thread happens to be, garbage collection and weak-reference callbacks included, and an
exception raised there is printed as "Exception ignored" and dropped; so the record stays, and
long loops call ``raise_if_stopped()`` at safe points (between slides, between blocks) to raise
it again. Steps that must not be cut in half run under ``stops_deferred()``: a signal that comes
there is raised at the block's end. (A ThreadPoolExecutor's ``submit`` starts a thread, waits for
it to run, then records it; cut between the two, the pool never joins that thread, and a
reader left running on a slide that is then closed makes OpenSlide abort the process.) A SIGINT
that the process inherited as ignored (a background job of a shell) stays ignored. Imports:
nothing of the package.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_received: list[int] = []  # the signals received while the handlers were in place
_deferring: list[bool] = []  # one entry per stops_deferred() block the main thread is in


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised in the main thread; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _record_and_raise(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    if not _deferring:
        raise Stopped(signum)


def raise_if_stopped() -> None:
    """Raises ``Stopped`` again if a signal came (its first raise may have been dropped)."""
    if _received:
        raise Stopped(_received[0])


@contextmanager
def stops_deferred() -> Iterator[None]:
    """A block that SIGTERM and SIGINT do not cut: one that comes in it is raised at its end
    (``raise_if_stopped``), unless the block ends with an exception of its own, which goes on
    (the record stays for the next safe point). Main thread only: handlers run nowhere else,
    and elsewhere the block is a plain one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
    raise_if_stopped()


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """The handlers of the module docstring, in place for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        wanted.append(signal.SIGINT)
    previous = {s: signal.signal(s, _record_and_raise) for s in wanted}
    _received.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            if signal.getsignal(s) is _record_and_raise:  # unless the block put its own
                signal.signal(s, handler)
        _received.clear()
