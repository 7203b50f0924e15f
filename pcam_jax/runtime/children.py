"""Child processes that die with their parent, and no shared memory left behind.

grain's worker processes (``data.worker_count > 0``) are multiprocessing children (the
``spawn`` method); each re-imports the parent's main module and deserialises the input
pipeline, which imports ``pcam_jax.data``, and that import calls ``die_with_parent()`` when it
runs in a multiprocessing child. It starts a
daemon thread that checks every PARENT_POLL_SECONDS whether the parent process is still the
one that started the child, and ends the child (``os._exit``) as soon as it is not. A pcam-train
killed with SIGKILL (a scheduler's grace period spent, the OOM killer) so takes its workers with
it within a second. (``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the *thread* that
started the child exits, which in a process that starts workers from helper threads is not the
death of the process.)

Shared memory: the workers hand batches to the main process in ``psm_*`` segments of
/dev/shm, each registered with multiprocessing's resource tracker (a helper process of the
run). When the main process and its workers are gone, the tracker reads the end of its pipe,
unlinks every segment still registered and exits: nothing of the dead run stays in /dev/shm,
and other runs' segments, registered with their own trackers, are not touched.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

PARENT_POLL_SECONDS = 0.5


def is_child_process() -> bool:
    """Whether this process is a multiprocessing child (a grain worker), also while it
    re-imports the parent's main module, before multiprocessing records its parent."""
    return (
        multiprocessing.parent_process() is not None
        or multiprocessing.current_process().name != "MainProcess"
    )


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # the parent is gone: nobody will read this worker's results


def die_with_parent() -> None:
    """Ends this process soon after its parent dies, however the parent died (idempotent)."""
    if any(t.name == "pcam_jax-die-with-parent" for t in threading.enumerate()):
        return
    parent_pid = os.getppid()  # spawn and fork both start the child from its parent
    threading.Thread(
        target=_exit_when_orphaned,
        args=(parent_pid,),
        name="pcam_jax-die-with-parent",
        daemon=True,
    ).start()


__all__ = ["PARENT_POLL_SECONDS", "die_with_parent", "is_child_process"]
