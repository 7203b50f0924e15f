"""Exclusive locks between processes, on this host or on hosts sharing a filesystem: the one lock
of pcam_jax (a training run's workdir, a cohort's slides and tables).

A lock is ``fcntl.flock(LOCK_EX)`` on a lock file, taken on a file descriptor the holder keeps
open; the holder writes its pid, host and start time into the file, so that a refusal can name
it. ``join_or_start`` takes a shared lock instead and says whether the process is the first of a
group of processes that overlap in time (a cohort's session). The lock belongs to the open file:
it ends when the holder closes it or dies, even by SIGKILL, and the file that stays behind is
free for the next taker (no stale-lock rule is needed). flock is local to a host on old NFS
clients; Linux maps it to NFS (fcntl) locks since 2.6.12, and Lustre and GPFS honour it when
mounted with their lock option (``flock``). Imports: nothing of the package.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def try_lock(path: str | Path, *, wait: bool = False) -> int | None:
    """A file descriptor holding the exclusive lock on `path` (created, mode 0644 less the
    umask, if absent), with this process described in it; None when another process holds it
    (with `wait`, blocks until it is free instead). Release with ``os.close``."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    now = datetime.datetime.now().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {now}\n".encode(), 0)
    return fd


def join_or_start(path: str | Path) -> tuple[int, bool]:
    """(a file descriptor holding a shared lock on `path`, whether this process is the first
    holder): the first process to hold it finds no other holder. Call it under an exclusive
    lock (``held``) that every joiner takes, so that no two processes both find themselves
    first. The shared lock ends with ``os.close`` or with the process."""
    probe = try_lock(path)  # exclusive: taken only when no process holds the shared lock
    first = probe is not None
    if probe is not None:
        os.close(probe)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd, first


def lock_holder(path: str | Path) -> str:
    """Who holds (or last held) the lock on `path`, as its holder described itself."""
    try:
        return Path(path).read_text(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def held(path: str | Path) -> Iterator[None]:
    """Holds the lock on `path` for the duration of the block, waiting for it if need be."""
    fd = try_lock(path, wait=True)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)
