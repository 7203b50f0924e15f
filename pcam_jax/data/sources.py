"""Random-access sources of PCam patches, behind one interface.

Every source is a grain ``RandomAccessDataSource``: ``len(source)`` patches,
``source[i] -> {"image": uint8 (96, 96, 3), "label": int32 in {0, 1}, "index": int64}``.
Sources are selected by the config fields ``data.source`` and ``data.root``:

  pcam_hdf5  root/camelyonpatch_level_2_split_{split}_{x,y}.h5 (+ optional _meta.csv)
  folder     root/{train,valid,test}/{0|normal,1|tumor}/*.{png,jpg,jpeg,tif,tiff}
  kaggle     root/train/<id>.tif + root/train_labels.csv (id,label); train/valid are
             a seeded split of Kaggle's train ids (Kaggle's test labels are not public)

Sources are pickled into grain's worker processes: they hold only paths and
the label array, and each process opens each HDF5 file once, lazily, on its
first read (h5py handles must not be shared across processes).
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

from pcam_jax.data.pcam_format import (
    HOW_TO_GET_DATA,
    META_COLUMNS,
    PATCH_SHAPE,
    SPLITS,
    X_KEY,
    Y_KEY,
    check_split,
    split_paths,
)
from pcam_jax.errors import DataError

SOURCES: tuple[str, ...] = ("pcam_hdf5", "folder", "kaggle")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
CLASS_FOLDERS: dict[int, tuple[str, ...]] = {0: ("0", "normal"), 1: ("1", "tumor")}


class PatchSource:
    """Base class: a labelled, random-access split of 96x96 RGB patches."""

    name: str = ""
    split: str = ""
    labels: np.ndarray  # int32 (N,), values in {0, 1}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        return {
            "image": self.read_image(index),
            "label": self.labels[index],
            "index": np.int64(index),
        }

    def read_image(self, index: int) -> np.ndarray:
        """uint8 (96, 96, 3) patch number `index`."""
        raise NotImplementedError

    def read_images(self, start: int, stop: int) -> np.ndarray:
        """uint8 (stop - start, 96, 96, 3) patches start..stop-1, in order."""
        return np.stack([self.read_image(i) for i in range(start, stop)])

    def fingerprint(self) -> str:
        """A string that changes when the underlying files change (size or mtime)."""
        raise NotImplementedError

    def meta(self) -> dict[str, np.ndarray] | None:
        """Per-patch meta columns (PCam meta CSV), or None when there is none."""
        return None

    def describe(self) -> dict[str, Any]:
        """What this source reads, for logs and run records."""
        return {"source": self.name, "split": self.split, "n": len(self)}

    def __repr__(self) -> str:
        # grain checks repr(source) when restoring an iterator state: it names the data,
        # not its location, so a run can resume after the data moved (data.root changed).
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)})"


def _stat_line(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{st.st_mtime_ns}"


def _check_patch(image: np.ndarray, where: str) -> np.ndarray:
    if image.shape != PATCH_SHAPE or image.dtype != np.uint8:
        raise DataError(
            f"{where}: patch has shape {image.shape} and dtype {image.dtype}; "
            f"expected uint8 {PATCH_SHAPE} (96x96 RGB)"
        )
    return image


class PcamHdf5Source(PatchSource):
    """A split of the PCam HDF5 files. Labels are read into memory once."""

    name = "pcam_hdf5"

    def __init__(self, root: str | Path, split: str) -> None:
        self.split = split
        self.root = Path(root)
        self.x_path, self.y_path, self.meta_path = split_paths(root, split)
        for path in (self.x_path, self.y_path):
            if not path.is_file():
                raise DataError(f"{path}: file not found; {HOW_TO_GET_DATA}")
        with _open_h5(self.y_path) as f:
            y = _dataset(f, Y_KEY, self.y_path)
            if y.dtype != np.uint8 or y.ndim != 4 or y.shape[1:] != (1, 1, 1):
                raise DataError(
                    f"{self.y_path}: key {Y_KEY!r} has shape {y.shape} dtype {y.dtype}; "
                    "expected uint8 (N, 1, 1, 1)"
                )
            labels = _read_h5(y, self.y_path).reshape(-1)
        bad = np.flatnonzero(labels > 1)
        if bad.size:
            raise DataError(
                f"{self.y_path}: {bad.size} labels outside {{0, 1}} (first at index {bad[0]}: "
                f"{labels[bad[0]]}); PCam labels are 0 (normal) or 1 (tumour)"
            )
        with _open_h5(self.x_path) as f:
            x = _dataset(f, X_KEY, self.x_path)
            if x.dtype != np.uint8 or x.shape[1:] != PATCH_SHAPE:
                raise DataError(
                    f"{self.x_path}: key {X_KEY!r} has shape {x.shape} dtype {x.dtype}; "
                    f"expected uint8 (N, {', '.join(map(str, PATCH_SHAPE))})"
                )
            if x.shape[0] != labels.shape[0]:
                raise DataError(
                    f"{self.x_path} holds {x.shape[0]} patches but {self.y_path} holds "
                    f"{labels.shape[0]} labels; the pair is inconsistent: re-download or "
                    "re-convert this split"
                )
            if x.shape[0]:  # a truncated file fails here, not at training time
                _read_h5(x, self.x_path, x.shape[0] - 1)
        self.labels = labels.astype(np.int32)
        self._file: h5py.File | None = None
        self._x: h5py.Dataset | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _x=None, _pid=None)
        return state

    def _x_dataset(self) -> h5py.Dataset:
        if self._x is None or self._pid != os.getpid():
            self._file = _open_h5(self.x_path)
            self._x = self._file[X_KEY]
            self._pid = os.getpid()
        return self._x

    def read_image(self, index: int) -> np.ndarray:
        return _read_h5(self._x_dataset(), self.x_path, index)

    def read_images(self, start: int, stop: int) -> np.ndarray:
        return _read_h5(self._x_dataset(), self.x_path, slice(start, stop))

    def close(self) -> None:
        """Closes this process's file handle (reopened on the next read)."""
        if self._file is not None:
            self._file.close()
        self._file = self._x = self._pid = None

    def fingerprint(self) -> str:
        return ";".join(_stat_line(p) for p in (self.x_path, self.y_path))

    def meta(self) -> dict[str, np.ndarray] | None:
        if not self.meta_path.is_file():
            return None
        return read_meta_csv(self.meta_path, expected_rows=len(self))


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(
            f"{path}: not a readable HDF5 file ({e}); the file is truncated or corrupt: "
            "delete it and re-download (`pcam-data download`) or re-create it"
        ) from e


def _dataset(f: h5py.File, key: str, path: Path) -> h5py.Dataset:
    if key not in f:
        raise DataError(f"{path}: has no dataset {key!r} (keys: {list(f.keys())}); not a PCam file")
    return f[key]


def _read_h5(dset: h5py.Dataset, path: Path, index: Any = ()) -> np.ndarray:
    try:
        return dset[index]
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"{path}: reading {index!r} failed ({e}); the file is truncated or corrupt: "
            "delete it and re-download (`pcam-data download`) or re-create it"
        ) from e


def read_meta_csv(path: Path, expected_rows: int | None = None) -> dict[str, np.ndarray]:
    """Reads a PCam meta CSV into columns; checks the columns and the row count."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in META_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{path}: missing meta column(s) {missing}; a PCam meta CSV has "
                f"{', '.join(META_COLUMNS)}"
            )
        rows = list(reader)
    if expected_rows is not None and len(rows) != expected_rows:
        raise DataError(
            f"{path}: {len(rows)} rows but the split holds {expected_rows} patches; "
            "the meta CSV belongs to other data: re-download it"
        )
    cols: dict[str, np.ndarray] = {}
    for c in META_COLUMNS:
        values = [r[c] for r in rows]
        if c in ("coord_y", "coord_x"):
            cols[c] = np.asarray(values, dtype=np.int64)
        elif c in ("tumor_patch", "center_tumor_patch"):
            cols[c] = np.asarray([v.strip().lower() in ("true", "1") for v in values])
        else:
            cols[c] = np.asarray(values, dtype=object)
    return cols


def decode_rgb(path: Path, error: type[Exception] = DataError) -> np.ndarray:
    """uint8 (H, W, 3) of an image file, decoded by Pillow and converted to RGB (greyscale and
    palette expanded, alpha dropped); `error` naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise error(f"{path}: unreadable image ({e}); remove or replace the file") from e


def _load_image_file(path: Path) -> np.ndarray:
    return _check_patch(decode_rgb(path), str(path))


class _FileListSource(PatchSource):
    """A source backed by one image file per patch."""

    files: list[Path]

    def read_image(self, index: int) -> np.ndarray:
        return _load_image_file(self.files[index])

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in self.files:
            h.update(_stat_line(path).encode())
        return f"{len(self.files)} files sha256:{h.hexdigest()}"


class FolderSource(_FileListSource):
    """root/{split}/{0|normal,1|tumor}/*.{png,jpg,jpeg,tif,tiff}, sorted by path."""

    name = "folder"

    def __init__(self, root: str | Path, split: str) -> None:
        check_split(split)
        self.split = split
        self.root = Path(root)
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(
                f"{split_dir}: split folder not found; the folder layout is "
                "root/{train,valid,test}/{0|normal,1|tumor}/*.png|jpg|tif"
            )
        known = {n for names in CLASS_FOLDERS.values() for n in names}
        for other in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name not in known):
            if any(f.suffix.lower() in IMAGE_SUFFIXES for f in other.iterdir()):
                raise DataError(
                    f"{other}: a class folder outside the two labels (folders "
                    f"{' / '.join(sorted(known))}); PCam labels are 0 (normal) or 1 (tumour): "
                    "move these images out or into the right class folder"
                )
        files: list[Path] = []
        labels: list[int] = []
        for label, names in CLASS_FOLDERS.items():
            present = [split_dir / n for n in names if (split_dir / n).is_dir()]
            if len(present) != 1:
                raise DataError(
                    f"{split_dir}: expected exactly one class folder of {' or '.join(names)} "
                    f"for label {label}, found {len(present)}"
                )
            found = sorted(p for p in present[0].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(
                    f"{present[0]}: class folder holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
            labels += [label] * len(found)
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int32)


class KaggleSource(_FileListSource):
    """Kaggle "histopathologic cancer detection": root/train/<id>.tif, root/train_labels.csv.

    Kaggle publishes labels for its train ids only, so `train` and `valid` are a
    split of those: ids sorted, permuted by ``np.random.default_rng(split_seed)``,
    the first ``round(valid_fraction * N)`` are `valid`. The rule and a hash of
    the valid ids are in ``split_record``. Kaggle ids carry no slide identity,
    so patches of one slide can fall on both sides.
    """

    name = "kaggle"

    def __init__(
        self, root: str | Path, split: str, valid_fraction: float = 0.1, split_seed: int = 0
    ) -> None:
        check_split(split)
        if split == "test":
            raise DataError(
                "data.source='kaggle' has no labelled test split (Kaggle's test labels are not "
                "public); evaluate on split 'valid', or use the PCam HDF5 test split"
            )
        if not 0.0 < valid_fraction < 1.0:
            raise DataError(f"kaggle valid_fraction={valid_fraction}: must be in (0, 1)")
        self.split = split
        self.root = Path(root)
        labels_csv = self.root / "train_labels.csv"
        image_dir = self.root / "train"
        if not labels_csv.is_file() or not image_dir.is_dir():
            raise DataError(
                f"{self.root}: the Kaggle layout needs {labels_csv.name} and {image_dir.name}/; "
                "download the competition data from Kaggle and unpack it there"
            )
        id_label = _read_kaggle_labels(labels_csv)
        ids = sorted(id_label)
        perm = np.random.default_rng(split_seed).permutation(len(ids))
        n_valid = int(round(valid_fraction * len(ids)))
        chosen = perm[:n_valid] if split == "valid" else perm[n_valid:]
        chosen_ids = [ids[i] for i in sorted(chosen)]
        valid_ids = sorted(ids[i] for i in perm[:n_valid])
        self.files = [image_dir / f"{i}.tif" for i in chosen_ids]
        missing = [p for p in self.files if not p.is_file()]
        if missing:
            raise DataError(
                f"{labels_csv}: {len(missing)} labelled ids have no image, e.g. {missing[0]}"
            )
        self.labels = np.asarray([id_label[i] for i in chosen_ids], dtype=np.int32)
        self.ids = chosen_ids
        self.split_record = {
            "rule": "sorted ids, np.random.default_rng(seed).permutation, first round(f*N) valid",
            "seed": split_seed,
            "valid_fraction": valid_fraction,
            "n_ids": len(ids),
            "n_valid": n_valid,
            "valid_ids_sha256": hashlib.sha256("\n".join(valid_ids).encode()).hexdigest(),
        }

    def fingerprint(self) -> str:
        return f"{super().fingerprint()};{_stat_line(self.root / 'train_labels.csv')}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "split_record": self.split_record}


def _read_kaggle_labels(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"id", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path}: expected a header 'id,label', got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise DataError(f"{path}:{line}: label {row['label']!r} is not 0 or 1")
            out[row["id"]] = int(row["label"])
    if not out:
        raise DataError(f"{path}: no labelled ids")
    return out


def make_source(
    source: str,
    root: str | Path,
    split: str,
    *,
    kaggle_valid_fraction: float = 0.1,
    kaggle_split_seed: int = 0,
) -> PatchSource:
    """The `split` of `root` read as `source` (a `data.source` value)."""
    if source not in SOURCES:
        raise DataError(f"unknown data.source {source!r}: expected one of {', '.join(SOURCES)}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r}: directory not found; {HOW_TO_GET_DATA}")
    if source == "pcam_hdf5":
        return PcamHdf5Source(root, split)
    if source == "folder":
        return FolderSource(root, split)
    return KaggleSource(root, split, kaggle_valid_fraction, kaggle_split_seed)


class SubsetSource(PatchSource):
    """A class-balanced subset of another source: `examples` patches, examples // 2 normal and
    the rest tumour, each class's drawn in one order seeded by `seed`, so that for one seed the
    subset of N holds the subset of every smaller N (a data-efficiency curve adds patches
    rather than redrawing them). Index i is the base source's patch ``indices[i]``."""

    def __init__(self, base: PatchSource, examples: int, seed: int) -> None:
        self.base, self.name, self.split = base, base.name, base.split
        self.examples, self.seed = int(examples), int(seed)
        # where the normalisation statistics are cached: beside the data, under their own name
        self.root = getattr(base, "root", Path("."))
        self.cache_tag = f"_subset{self.examples}_seed{self.seed}"
        rng = np.random.default_rng(self.seed)
        picks = []
        for label, n in ((0, self.examples // 2), (1, self.examples - self.examples // 2)):
            members = np.flatnonzero(base.labels == label)
            order = rng.permutation(len(members))
            if n > len(members):
                raise DataError(
                    f"data.train_examples={examples}: the {base.split} split has "
                    f"{len(members):,} patches of class {label}, fewer than the {n:,} a "
                    "class-balanced subset needs; lower data.train_examples"
                )
            picks.append(members[order[:n]])
        self.indices = np.sort(np.concatenate(picks))
        self.labels = base.labels[self.indices]

    def read_image(self, index: int) -> np.ndarray:
        return self.base.read_image(int(self.indices[index]))

    def fingerprint(self) -> str:
        return f"{self.base.fingerprint()}|subset={self.examples},seed={self.seed}"

    def meta(self) -> dict[str, np.ndarray] | None:
        meta = self.base.meta()
        return None if meta is None else {k: v[self.indices] for k, v in meta.items()}

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "n": len(self), "subset_seed": self.seed}


def from_config(config: Any, split: str) -> PatchSource:
    """The `split` of a training config's data source (its ``data.*`` fields); the training
    split is a ``SubsetSource`` when ``data.train_examples`` > 0."""
    source = make_source(
        config.data.source,
        config.data.root,
        split,
        kaggle_valid_fraction=config.data.kaggle_valid_fraction,
        kaggle_split_seed=config.data.kaggle_split_seed,
    )
    examples = config.data.get("train_examples", 0)
    if examples > 0 and split == config.data.get("train_split", "train"):
        return SubsetSource(source, examples, config.data.get("train_subset_seed", 0))
    return source


def available_splits(source: str, root: str | Path) -> list[str]:
    """The splits of SPLITS that `root` holds in the `source` layout."""
    root = Path(root)
    if source == "pcam_hdf5":
        return [s for s in SPLITS if split_paths(root, s)[0].is_file()]
    if source == "folder":
        return [s for s in SPLITS if (root / s).is_dir()]
    if source == "kaggle":
        return ["train", "valid"]
    raise DataError(f"unknown data.source {source!r}: expected one of {', '.join(SOURCES)}")
