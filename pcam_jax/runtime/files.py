"""Writing files so that no partial output is ever left under a final name: the one atomic
writer of pcam_jax.

Every output goes through ``atomic_path`` (one file: JSON with ``write_json``, CSV with
``write_csv``, anything else by writing to the yielded temporary path) or ``atomic_dir`` (a
folder of outputs, renamed into place whole). The temporary name sits beside the target
(``.NAME.pcam-HOST-PID.XXXX.tmp``), so the final rename is atomic on the same filesystem; on an
exception it is removed and the target is untouched. A process killed outright (SIGKILL) cannot
remove it: the next atomic write into the same folder removes every such temporary whose
process, on this host, is gone. Outputs get the modes the umask gives a new file or folder
(``tempfile`` alone would make them 0600 / 0700). Before any work, ``check_output_file`` and
``check_new_dir`` refuse an output that is one of the inputs, or that cannot be written.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STALE = re.compile(r"^\..+\.pcam-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _temp_prefix(name: str) -> str:
    return f".{name}.pcam-{_host()}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes the temporary files and folders that pcam_jax processes of this host left in
    `folder` when they were killed (their pid is gone); returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STALE.match(entry.name)
        if not match or match["host"] != host or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux):
    setting and restoring it would, for that instant, give files other threads create mode
    0666."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # elsewhere: swap, with the safe mask for that instant
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` only on success.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """`obj` as indented JSON (and a final newline) at `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file with `header` and `rows` at `path`, atomically (quoted as csv needs)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_dict_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """A CSV file of dict `rows` (columns: the first row's keys) at `path`, atomically."""
    header = list(rows[0]) if rows else []
    write_csv(path, header, ([row[k] for k in header] for row in rows))


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether `a` and `b` name the same file or folder, through links and relative parts."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def writable_folder(folder: str | Path) -> bool:
    """Whether a file can be created in `folder`, found by creating (and removing) a temporary
    folder there: ``os.access`` alone says yes to root on a read-only filesystem."""
    try:
        probe = tempfile.mkdtemp(prefix=_temp_prefix("write-probe"), suffix=".tmp", dir=folder)
    except OSError:
        return False
    os.rmdir(probe)
    return True


def check_output_file(
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    error: type[Exception] = OSError,
    flag: str = "--out",
) -> Path:
    """Checks, before any work, that file `out` can be written: it is not a folder, not one of
    the `inputs` (through links), and its folder exists and is writable. Raises `error` naming
    `out` otherwise."""
    out = Path(out)
    for path in inputs:
        if same_path(out, path):
            raise error(
                f"{flag}={out}: is one of the inputs ({path}); writing it would destroy that "
                "input. Choose another file name"
            )
    if out.is_dir():
        raise error(f"{flag}={out}: is a folder; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"{flag}={out}: folder {parent} does not exist")
    if not writable_folder(parent) or (out.exists() and not os.access(out, os.W_OK)):
        raise error(f"{flag}={out}: cannot write there (permission denied or read-only)")
    return out


def check_new_dir(
    out: str | Path, error: type[Exception] = OSError, *, empty_ok: bool = True
) -> Path:
    """Checks that folder `out` can be created: absent (or, with `empty_ok`, an empty folder),
    its parent an existing, writable folder. Raises `error` naming `out` otherwise."""
    out = Path(out)
    if out.exists() and not empty_ok:
        raise error(f"--out={out}: already exists; choose a new one or remove it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise error(f"--out={out}: exists and is not an empty folder; choose a new one")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"--out={out}: parent folder {parent} does not exist")
    if not writable_folder(parent):
        raise error(f"--out={out}: cannot write in {parent} (permission denied or read-only)")
    return out


@contextmanager
def atomic_dir(out: str | Path, *, replace_empty: bool = True) -> Iterator[Path]:
    """Yields a temporary folder beside `out`; renames it to `out` only on success.

    `out` must be absent or, with ``replace_empty``, an empty folder (``check_new_dir``). On an
    exception the temporary folder is removed and `out` is left untouched.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    remove_stale_temporaries(parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(out.name), suffix=".tmp", dir=parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())
        if out.exists() and replace_empty:
            out.rmdir()  # empty (check_new_dir); rmdir refuses anything else
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = [
    "atomic_dir",
    "atomic_path",
    "check_new_dir",
    "check_output_file",
    "remove_stale_temporaries",
    "same_path",
    "writable_folder",
    "write_csv",
    "write_dict_csv",
    "write_json",
]
