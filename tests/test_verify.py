"""Tests of `pcam-data verify` (pcam_jax.data.verify) on small PCam-format files."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from pcam_jax.cli.data import main
from pcam_jax.data.pcam_format import HOW_TO_GET_DATA, META_COLUMNS, meta_name, x_name, y_name
from pcam_jax.data.verify import VerifyReport, verify_root

SIZES = {"train": 8, "valid": 4, "test": 4}


def write_array(path: Path, key: str, data: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=data)


def write_meta(path: Path, n: int, columns=META_COLUMNS) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", *columns])  # the real files carry a leading unnamed index column
        for i in range(n):
            w.writerow([i, *[f"{c}{i}" for c in columns]])


def write_split(root: Path, split: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    write_array(root / x_name(split), "x", rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))
    write_array(root / y_name(split), "y", rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))
    write_meta(root / meta_name(split), n)


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "pcam"
    root.mkdir()
    for i, (split, n) in enumerate(SIZES.items()):
        write_split(root, split, n, seed=i)
    return root


def failed(report: VerifyReport) -> set[tuple[str, str]]:
    return {(e.file, e.check) for e in report.entries if not e.ok}


def failed_lines(report: VerifyReport) -> list[str]:
    return [line for line in report.format().splitlines() if line.startswith("FAILED ")]


def assert_fails(report: VerifyReport, file: str, check: str, *words: str) -> str:
    """The report fails exactly one check, (file, check); its line names the file and
    holds `words`. Returns that line."""
    assert not report.ok
    assert failed(report) == {(file, check)}
    lines = failed_lines(report)
    assert len(lines) == 1 and file in lines[0], report.format()
    for word in words:
        assert word in lines[0], lines[0]
    assert report.format().splitlines()[-1].startswith("FAILED: 1 of ")
    return lines[0]


def test_good_data_passes(root):
    report = verify_root(root)
    assert report.ok, report.format()
    # 3 splits x (x: present hdf5 shape dtype read; y: present hdf5 shape dtype labels;
    # length; meta: columns rows)
    assert len(report.entries) == 3 * 13
    last = report.format().splitlines()[-1]
    assert last == f"OK: all {3 * 13} checks passed"


def test_cli_verify_good_exits_0(root, capsys):
    assert main(["pcam-data", "verify", f"--root={root}"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "OK: all 39 checks passed"


def test_cli_verify_bad_exits_1(root, capsys):
    (root / y_name("test")).unlink()
    assert main(["pcam-data", "verify", f"--root={root}", "--splits=test"]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("FAILED") and y_name("test") in line for line in out.splitlines()), (
        out
    )
    assert "FAILED: 1 of " in out


def test_only_requested_splits_are_checked(root):
    (root / x_name("train")).unlink()
    assert verify_root(root, splits=["valid", "test"]).ok
    assert not verify_root(root, splits=["train"]).ok


def test_missing_file(root):
    (root / y_name("test")).unlink()
    line = assert_fails(verify_root(root), y_name("test"), "present", "missing")
    assert HOW_TO_GET_DATA in line


def test_missing_split_fails(root):
    for name in (x_name("valid"), y_name("valid"), meta_name("valid")):
        (root / name).unlink()
    report = verify_root(root)
    assert failed(report) == {(x_name("valid"), "present"), (y_name("valid"), "present")}


def test_missing_meta_is_skipped_not_failed(root):
    (root / meta_name("train")).unlink()
    report = verify_root(root)
    assert report.ok
    (entry,) = [e for e in report.entries if e.file == meta_name("train")]
    assert entry.skipped and entry.status == "skipped"
    assert "(1 skipped)" in report.format().splitlines()[-1]


def test_length_mismatch(root):
    write_array(root / y_name("valid"), "y", np.zeros((3, 1, 1, 1), np.uint8))
    report = verify_root(root)
    assert_fails(report, y_name("valid"), "length", "3 labels", x_name("valid"), "4")
    (rows,) = [e for e in report.entries if e.file == meta_name("valid") and e.check == "rows"]
    assert rows.skipped


def test_wrong_shape(root):
    write_array(root / x_name("train"), "x", np.zeros((8, 32, 32, 3), np.uint8))
    assert_fails(verify_root(root), x_name("train"), "shape", "(8, 32, 32, 3)", "(N, 96, 96, 3)")


def test_wrong_label_shape(root):
    write_array(root / y_name("train"), "y", np.zeros((8,), np.uint8))
    assert_fails(verify_root(root), y_name("train"), "shape", "(8,)", "(N, 1, 1, 1)")


def test_wrong_dtype(root):
    write_array(root / x_name("test"), "x", np.zeros((4, 96, 96, 3), np.float32))
    assert_fails(verify_root(root), x_name("test"), "dtype", "float32", "uint8")


def test_missing_key(root):
    write_array(root / y_name("test"), "labels", np.zeros((4, 1, 1, 1), np.uint8))
    assert_fails(verify_root(root), y_name("test"), "key", "'y'", "labels")


def test_label_value_2(root):
    y = np.zeros((8, 1, 1, 1), np.uint8)
    y[5] = 2
    write_array(root / y_name("train"), "y", y)
    assert_fails(verify_root(root), y_name("train"), "labels", "values 2", "index 5")


def test_truncated_hdf5(root):
    path = root / x_name("train")
    size = path.stat().st_size
    os.truncate(path, size // 2)
    line = assert_fails(verify_root(root), x_name("train"), "hdf5", "cannot open as HDF5")
    assert "Traceback" not in line


def test_not_hdf5_at_all(root):
    (root / y_name("valid")).write_bytes(b"<html>404 Not Found</html>\n")
    assert_fails(verify_root(root), y_name("valid"), "hdf5", "cannot open as HDF5")


def test_meta_row_count_mismatch(root):
    write_meta(root / meta_name("test"), 3)
    assert_fails(verify_root(root), meta_name("test"), "rows", "3 rows", "4 patches")


def test_meta_missing_column(root):
    write_meta(root / meta_name("valid"), 4, columns=[c for c in META_COLUMNS if c != "wsi"])
    assert_fails(verify_root(root), meta_name("valid"), "columns", "missing column(s) wsi")


def test_meta_columns_in_any_order(root):
    write_meta(root / meta_name("valid"), 4, columns=list(reversed(META_COLUMNS)))
    assert verify_root(root).ok


def test_md5_match_mismatch_and_absent(root):
    good = hashlib.md5((root / y_name("test")).read_bytes()).hexdigest()
    checksums = {
        y_name("test"): good.upper(),
        x_name("test"): "0" * 32,
        "camelyonpatch_level_2_split_test_x.h5.gz": "1" * 32,  # not present: skipped
    }
    report = verify_root(root, checksums=checksums)
    line = assert_fails(report, x_name("test"), "md5", "0" * 32)
    actual = hashlib.md5((root / x_name("test")).read_bytes()).hexdigest()
    assert actual in line
    md5_entries = {e.file: e.status for e in report.entries if e.check == "md5"}
    assert md5_entries == {
        y_name("test"): "ok",
        x_name("test"): "FAILED",
        "camelyonpatch_level_2_split_test_x.h5.gz": "skipped",
    }


def test_cli_verify_with_checksums_file(root, tmp_path, capsys):
    sums = tmp_path / "sums.md5"
    sums.write_text(f"{'0' * 32}  {x_name('test')}\n")
    assert main(["pcam-data", "verify", f"--root={root}", f"--checksums={sums}"]) == 1
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.startswith("FAILED ")]
    assert x_name("test") in line and "md5" in line


def test_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    report = verify_root(missing)
    assert not report.ok
    assert len(report.entries) == 1
    (line,) = failed_lines(report)
    assert str(missing) in line and "does not exist" in line and HOW_TO_GET_DATA in line
    assert report.format().splitlines()[-1] == "FAILED: 1 of 1 checks failed"


def test_cli_missing_root_exits_1(tmp_path, capsys):
    assert main(["pcam-data", "verify", f"--root={tmp_path / 'nowhere'}"]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_unknown_split(root):
    report = verify_root(root, splits=["train", "bogus"])
    assert failed(report) == {("split 'bogus'", "split")}
