"""One training run per workdir: an exclusive lock that the OS releases when the process dies.

``workdir_lock(workdir)`` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``WORKDIR/.pcam_train.lock.p{process_index}`` (one file per JAX process, so each process of a
second multi-process run fails on its own lock at once) and writes the holder's pid, host and
start time into it. A second pcam-train on the same workdir gets TrainingError naming that pid
and host. The lock belongs to the open file: a run that is killed, even by SIGKILL, leaves the
file but not the lock, so the next run starts normally. flock is advisory: pcam-eval, which only
reads finished checkpoints (Orbax commits a step by renaming its folder when complete), does not
take it and may run beside training.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax

from pcam_jax.errors import TrainingError


def lock_path(workdir: Path, process_index: int) -> Path:
    """The lock file of JAX process `process_index` in `workdir`."""
    return workdir / f".pcam_train.lock.p{process_index}"


@contextmanager
def workdir_lock(workdir: str | Path) -> Iterator[Path]:
    """Holds this process's exclusive lock on `workdir` for the duration of the block."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = lock_path(workdir, jax.process_index())
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise TrainingError(
                f"{workdir} is in use by another pcam-train ({holder}); wait for it to finish "
                "or stop it, or choose another --workdir"
            ) from None
        now = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {now}\n".encode(), 0
        )
        yield path
    finally:
        os.close(fd)  # releases the lock


__all__ = ["lock_path", "workdir_lock"]
