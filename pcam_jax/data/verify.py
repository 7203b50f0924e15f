"""`pcam-data verify`: check a PCam directory file by file, without tracebacks.

For each requested split: the x and y HDF5 files are present and open; ``x`` is
uint8 (N, 96, 96, 3) and its first and last patches can be read; ``y`` is uint8
(N, 1, 1, 1) with values in {0, 1}; x and y have the same N; the meta CSV, if
present (it is optional), has the META_COLUMNS (any order, extra columns allowed)
and N rows. With `checksums`, every named file present in the root is md5-checked
(absent ones are reported as skipped).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from pcam_jax.data.pcam_format import (
    HOW_TO_GET_DATA,
    META_COLUMNS,
    PATCH_SHAPE,
    SPLITS,
    X_KEY,
    Y_KEY,
    meta_name,
    x_name,
    y_name,
)

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class VerifyEntry:
    """The outcome of one check of one file. A skipped check has ok=True."""

    file: str
    check: str
    ok: bool
    detail: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        """'ok', 'skipped' or 'FAILED'."""
        return "skipped" if self.skipped else ("ok" if self.ok else "FAILED")


@dataclass
class VerifyReport:
    """All checks of one root directory, in the order they ran."""

    root: str
    entries: list[VerifyEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if no check failed."""
        return all(e.ok for e in self.entries)

    @property
    def failures(self) -> list[VerifyEntry]:
        """The failed checks."""
        return [e for e in self.entries if not e.ok]

    def add(self, file: str, check: str, ok: bool, detail: str = "") -> bool:
        """Records a check; returns `ok` so callers can stop at a failure."""
        self.entries.append(VerifyEntry(file, check, ok, detail))
        return ok

    def skip(self, file: str, check: str, detail: str) -> None:
        """Records a check that did not apply."""
        self.entries.append(VerifyEntry(file, check, True, detail, skipped=True))

    def format(self) -> str:
        """A table, one line per check, grouped by file, ending with a summary line."""
        lines = [f"PCam data check of {self.root}"]
        if self.entries:
            fw = max(len(e.file) for e in self.entries)
            cw = max(len(e.check) for e in self.entries)
            order: dict[str, list[VerifyEntry]] = {}
            for e in self.entries:
                order.setdefault(e.file, []).append(e)
            for group in order.values():
                lines.append("")
                for e in group:
                    row = f"{e.status:<7}  {e.file:<{fw}}  {e.check:<{cw}}  {e.detail}"
                    lines.append(row.rstrip())
        n = len(self.entries)
        skipped = sum(e.skipped for e in self.entries)
        note = f" ({skipped} skipped)" if skipped else ""
        lines.append("")
        if self.ok:
            lines.append(f"OK: all {n} checks passed{note}")
        else:
            lines.append(f"FAILED: {len(self.failures)} of {n} checks failed{note}")
        return "\n".join(lines)


def verify_root(
    root: str | Path,
    *,
    splits: Iterable[str] = SPLITS,
    checksums: dict[str, str] | None = None,
) -> VerifyReport:
    """Checks the PCam files of `splits` under `root` (and `checksums`, name -> md5).

    Never raises for bad data: every problem is a failed entry of the report.
    """
    root = Path(root)
    report = VerifyReport(str(root))
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        report.add(str(root), "root", False, f"{what}; {HOW_TO_GET_DATA}")
        return report
    for split in splits:
        if split not in SPLITS:
            report.add(f"split {split!r}", "split", False, f"unknown; expected {', '.join(SPLITS)}")
            continue
        _verify_split(root, split, report)
    if checksums:
        for name, md5 in checksums.items():
            _verify_md5(root / name, md5.lower(), report)
    return report


def _verify_split(root: Path, split: str, report: VerifyReport) -> None:
    n_x = _verify_array(root / x_name(split), X_KEY, PATCH_SHAPE, report, read_all=False)
    n_y = _verify_array(root / y_name(split), Y_KEY, (1, 1, 1), report, read_all=True)
    if n_x is not None and n_y is not None:
        report.add(
            y_name(split),
            "length",
            n_x == n_y,
            f"{n_y} labels"
            if n_x == n_y
            else f"{n_y} labels but {x_name(split)} has {n_x} "
            "patches; the pair does not belong together: re-download or re-create both",
        )
    # With x and y disagreeing there is no N to hold the meta CSV to.
    n = n_x if n_y is None else n_y if n_x is None or n_x == n_y else None
    _verify_meta(root / meta_name(split), n, report)


def _verify_array(
    path: Path,
    key: str,
    item_shape: tuple[int, ...],
    report: VerifyReport,
    *,
    read_all: bool,
) -> int | None:
    """Checks one HDF5 array file; returns its length N if it is usable, else None."""
    name = path.name
    if not report.add(
        name, "present", path.is_file(), "" if path.is_file() else f"missing; {HOW_TO_GET_DATA}"
    ):
        return None
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as e:
        report.add(name, "hdf5", False, f"cannot open as HDF5 ({_first_line(e)}); {_REDO}")
        return None
    with f:
        report.add(name, "hdf5", True)
        ds = f.get(key)
        if not isinstance(ds, h5py.Dataset):
            found = ", ".join(sorted(f.keys())) or "none"
            report.add(name, "key", False, f"no dataset {key!r} (keys: {found}); {_REDO}")
            return None
        want = f"(N, {', '.join(map(str, item_shape))})"
        shape_ok = len(ds.shape) == 1 + len(item_shape) and tuple(ds.shape[1:]) == item_shape
        dtype_ok = ds.dtype == np.uint8
        report.add(
            name,
            "shape",
            shape_ok,
            f"{ds.shape}" if shape_ok else f"{key} has shape {ds.shape}, expected {want}; {_REDO}",
        )
        report.add(
            name,
            "dtype",
            dtype_ok,
            "uint8" if dtype_ok else f"{key} has dtype {ds.dtype}, expected uint8; {_REDO}",
        )
        if not (shape_ok and dtype_ok):
            return None
        n = int(ds.shape[0])
        try:
            if read_all:
                values = ds[()]
            elif n:
                _ = ds[0], ds[n - 1]
        except (OSError, ValueError, RuntimeError) as e:
            report.add(name, "read", False, f"cannot read {key} ({_first_line(e)}); {_REDO}")
            return None
        if read_all:
            bad = (values != 0) & (values != 1)
            count = int(bad.sum())
            if count:
                first = int(np.flatnonzero(bad.reshape(-1))[0])
                odd = ", ".join(str(v) for v in np.unique(values[bad])[:5])
                detail = (
                    f"{count} label(s) not in {{0, 1}} (values {odd}; first at index {first}); "
                    f"{_REDO}"
                )
                report.add(name, "labels", False, detail)
            else:
                report.add(name, "labels", True, f"{int(values.sum())} of {n} positive")
        else:
            report.add(name, "read", True, "first and last patch readable" if n else "empty")
        return n


def _verify_meta(path: Path, n: int | None, report: VerifyReport) -> None:
    name = path.name
    if not path.is_file():
        report.skip(name, "present", "optional, not present")
        return
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = sum(1 for row in reader if row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        report.add(name, "csv", False, f"cannot read as CSV ({e}); {_REDO}")
        return
    columns = [c.strip() for c in header or []]
    missing = [c for c in META_COLUMNS if c not in columns]
    report.add(
        name,
        "columns",
        not missing,
        f"missing column(s) {', '.join(missing)} (header: {','.join(columns) or 'empty'}); "
        f"expected {', '.join(META_COLUMNS)}; {_REDO}"
        if missing
        else ", ".join(META_COLUMNS),
    )
    if n is None:
        report.skip(name, "rows", f"{rows} rows; no agreed x/y length to compare with")
    else:
        report.add(
            name,
            "rows",
            rows == n,
            f"{rows} rows" if rows == n else f"{rows} rows but the split has {n} patches; {_REDO}",
        )


def _verify_md5(path: Path, md5: str, report: VerifyReport) -> None:
    if not path.is_file():
        report.skip(path.name, "md5", "not present")
        return
    h = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                h.update(chunk)
    except OSError as e:
        report.add(path.name, "md5", False, f"cannot read ({e})")
        return
    actual = h.hexdigest()
    report.add(
        path.name,
        "md5",
        actual == md5,
        actual if actual == md5 else f"md5 {actual}, expected {md5}; {_REDO}",
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_REDO = "re-download it (`pcam-data download`) or re-create it"
