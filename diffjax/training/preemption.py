"""Stopping a run cleanly when the machine is taken away: SIGTERM (a scheduler's preemption notice)
and SIGINT (Ctrl-C) are recorded rather than obeyed at once, so the training loop can finish the
compiled call it is in, write a checkpoint, flush its logs and exit with `PREEMPTED_EXIT_CODE`.
A second signal of either kind acts as usual (the handlers are restored after the first).
"""

import signal

PREEMPTED_EXIT_CODE = 75
"""The exit code of a run stopped by SIGTERM or SIGINT after checkpointing (EX_TEMPFAIL: run it again)."""


class StopSignals:
    """A context manager that records the first SIGTERM or SIGINT instead of dying of it.

    Example:
      with StopSignals() as stop:
          for step in ...:
              ...
              if stop.received:
                  save(); break

    Attributes:
      received: the name of the signal received ("SIGTERM", "SIGINT"), or None.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None
        self._previous = {}

    def _record(self, number, frame):
        del frame
        self.received = signal.Signals(number).name
        self._restore()  # a second signal stops the run the usual way

    def _restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def __enter__(self):
        self._previous = {number: signal.getsignal(number) for number in self.SIGNALS}
        for number in self.SIGNALS:
            signal.signal(number, self._record)
        return self

    def __exit__(self, *exc):
        self._restore()
        return False
