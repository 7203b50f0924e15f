"""Preemption: SIGTERM or SIGINT makes pcam-train save a checkpoint at the next step and exit.

Schedulers preempt with SIGTERM and a grace period (SLURM's ``--signal``, Kubernetes, Cloud TPU
maintenance); a terminal sends SIGINT on Ctrl-C. ``preemption_watcher()`` installs handlers for
both that only record the first signal; repeats during the save are logged and ignored, so the
checkpoint being written is never cut short. The training loop asks ``watcher.stop(step)`` after
every step; when it says so, the loop saves a checkpoint of that step (model, optimizer, EMA,
data iterator, record: the same as a periodic one) and raises ``Preempted``, and pcam-train
exits with EXIT_PREEMPTED (75, EX_TEMPFAIL: "try again"), distinct from success (0) and errors
(1). Once a signal has come, the handlers stay in place until the process exits, so a second
signal cannot turn that exit into a kill. A restart resumes from that checkpoint as from any
other, bitwise.

Several processes: every process must save the same step. Each asks the others every
``MULTI_PROCESS_CHECK_EVERY`` steps (the same steps everywhere) whether any of them received a
signal (an all-gather of one flag), so a signal to any one process stops all of them at the
same step. Handlers can only be installed from the main thread; elsewhere (a training call from
a worker thread) the watcher never stops the run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from pcam_jax.errors import Preempted

EXIT_PREEMPTED = 75
MULTI_PROCESS_CHECK_EVERY = 10
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
    """Records the first SIGTERM/SIGINT; ``stop(step)`` says whether to save and exit now."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
            logging.warning("%s received: saving a checkpoint after this step, then exiting", name)
        else:
            logging.warning("%s received again: still saving; the checkpoint will be whole", name)

    def stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop: this process's signal (one process), or any
        process's at the agreed steps (several)."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        if step % MULTI_PROCESS_CHECK_EVERY:
            return False
        mine = np.int32(self.signal_name is not None)
        anyone = bool(np.asarray(multihost_utils.process_allgather(mine)).max())
        if anyone and self.signal_name is None:
            self.signal_name = "SIGTERM (another process)"
        return anyone


@contextmanager
def preemption_watcher() -> Iterator[PreemptionWatcher]:
    """A PreemptionWatcher whose handlers are installed for the duration of the block."""
    watcher = PreemptionWatcher()
    if threading.current_thread() is not threading.main_thread():
        yield watcher
        return
    previous = {s: signal.signal(s, watcher.handle) for s in SIGNALS}
    try:
        yield watcher
    finally:
        if watcher.signal_name is None:  # after a signal, more of them are ignored until exit
            for s, handler in previous.items():
                signal.signal(s, handler)


__all__ = ["EXIT_PREEMPTED", "Preempted", "PreemptionWatcher", "preemption_watcher"]
