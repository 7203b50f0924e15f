"""Writing files so that no partial output is ever left under a final name: the one atomic
writer of pcam_jax.

Every output goes through ``atomic_path`` (one file: JSON with ``write_json``, CSV with
``write_csv``, anything else by writing to the yielded temporary path) or ``atomic_dir`` (a
folder of outputs, renamed into place whole). The temporary name sits beside the target
(``.NAME.*``), so the final rename is atomic on the same filesystem; on an exception it is
removed and the target is untouched. Outputs get the modes the umask gives a new file or folder
(``tempfile`` alone would make them 0600 / 0700).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` only on success.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def check_new_dir(out: str | Path, error: type[Exception] = OSError) -> Path:
    """Checks that folder `out` can be created: absent or empty, its parent an existing,
    writable folder. Raises `error` naming `out` otherwise."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise error(f"--out={out}: exists and is not an empty folder; choose a new one")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"--out={out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise error(f"--out={out}: cannot write in {parent}")
    return out


@contextmanager
def atomic_dir(out: str | Path, *, replace_empty: bool = True) -> Iterator[Path]:
    """Yields a temporary folder beside `out`; renames it to `out` only on success.

    `out` must be absent or, with ``replace_empty``, an empty folder (``check_new_dir``). On an
    exception the temporary folder is removed and `out` is left untouched.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
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
    "write_csv",
    "write_dict_csv",
    "write_json",
]
