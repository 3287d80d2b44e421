"""How a run stops on SIGINT and SIGTERM: cleanly, at a point where nothing is half done.

While a :class:`StopSignals` guard is active (the CLI holds one for the whole command, the engine
one for its loop), a first SIGINT/SIGTERM is only remembered: the engine finishes the step in
flight, writes a checkpoint of it and raises :class:`Interrupted`; before training has begun,
the next :meth:`StopSignals.check` raises it with nothing to save. A second signal raises
:class:`Interrupted` at once. No traceback either way: the CLI prints the message as one line
and exits with the conventional status, 128 + the signal's number (130 SIGINT, 143 SIGTERM).
"""

from __future__ import annotations

import signal
import threading


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the run; ``status`` is 128 + the signal's number. A
    BaseException, like KeyboardInterrupt, so no ``except Exception`` swallows it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.status = 128 + signum


class StopSignals:
    """Remember a first SIGINT/SIGTERM (``received``); raise :class:`Interrupted` on a second.
    Nested guards share the outermost one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    _active: StopSignals | None = None

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}
        self._outer: StopSignals | None = None

    def __enter__(self) -> StopSignals:
        if StopSignals._active is not None:
            self._outer = StopSignals._active
            return self._outer
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            StopSignals._active = self
        return self

    def __exit__(self, *exc: object) -> None:
        if self._outer is not None:
            self._outer = None
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if StopSignals._active is self:
            StopSignals._active = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:
            raise Interrupted(f"stopped at once by a second {signal.Signals(signum).name}", signum)
        self.received = signum

    def check(self, what: str = "before training started; nothing to save") -> None:
        """Raise :class:`Interrupted` if a signal came (use where no work is in flight)."""
        if self.received is not None:
            name = signal.Signals(self.received).name
            raise Interrupted(f"stopped by {name} {what}", self.received)
