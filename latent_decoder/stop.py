"""Ctrl-C and ``kill PID`` during a run: stop starting items, keep every finished one.

A signal becomes ``Interrupted`` in the main thread at the next bytecode, anywhere, unless a
``critical()`` section is open: then it waits until the section ends. The runner commits each result
inside one; the executors hand items from stage to stage (an item's outputs being written, then
committed) inside one too, so an interrupt can never drop an item between "its files are on disk"
and "the journal says so": whatever is in flight when it lands, the executor still finishes and
commits.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: stop starting items, keep finished ones."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Ctrl-C (SIGINT) and ``kill PID`` (SIGTERM) stop a run as ``Interrupted``, but never inside a
    ``critical()`` section (committing one result and counting it): there the signal waits until
    the section ends, so the report and the journal always agree. Only the main thread gets signals."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self.raised: int | None = None  # the last signal turned into Interrupted (Ray re-raises it plainly)
        self.previous: dict[int, Any] = {}
        self.outer: StopSignals | None = None  # a run started inside another run's (the API in a callback)
        self.installed = False  # entered in the main thread: the active one until it exits
        self.pid = os.getpid()

    def _handler(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self.pid:  # a child between fork and exec (an encoder starting): not ours to stop
            return
        if self.depth:
            self.pending = signum
        else:
            self.raised = signum
            raise Interrupted(signum)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                self.raised = signum
                raise Interrupted(signum)

    def __enter__(self) -> "StopSignals":
        global _active
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            # A signal its starter ignores stays ignored, as shells ask of a script's background job
            # (`latent-decoder decode EXP &` there ignores SIGINT: a Ctrl-C for the script is not for it).
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self.previous[signum] = signal.signal(signum, self._handler)
        self.installed = True
        self.outer, _active = _active, self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.installed:
            _active = self.outer


def interrupt_signal(exc: BaseException, signals: StopSignals) -> int | None:
    """The signal behind ``exc``, or None when it is no interrupt. Ours carry it; a plain
    KeyboardInterrupt (re-raised by Ray or watchfiles from inside their calls) is the last signal the
    handlers saw. Any other exception after a signal was raised is that interrupt too: ``Interrupted``
    raised while a ``threading.Condition`` waits (a thread pool's result, a queue) leaves its lock
    released, and unwinding then fails with "cannot release un-acquired lock" instead."""
    if isinstance(exc, Interrupted):
        return exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return signals.raised or signal.SIGINT
    return signals.raised if isinstance(exc, Exception) else None


_active: StopSignals | None = None  # the run's, while its handlers are installed


def critical() -> ContextManager[None]:
    """The running ``StopSignals``' critical section; nothing to defer when none is installed
    (an API call from another thread, a test driving an executor directly). Main thread only."""
    return _active.critical() if _active is not None else nullcontext()
