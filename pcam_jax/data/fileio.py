"""Writing files so that no partial output is ever left under a final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


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
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yields a temporary folder beside `out` (absent or empty); renames it to `out` only on
    success. On an exception the temporary folder is removed and `out` is left untouched."""
    import shutil

    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else "."))
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty (check_new_dir)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
