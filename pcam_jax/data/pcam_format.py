"""The PatchCamelyon (PCam) file format: names, keys, shapes, checksums.

PCam (Veeling et al. 2018, https://github.com/basveeling/pcam, Zenodo record
2546921) ships, per split in {train, valid, test}:

  camelyonpatch_level_2_split_{split}_x.h5   key "x", uint8 (N, 96, 96, 3)
  camelyonpatch_level_2_split_{split}_y.h5   key "y", uint8 (N, 1, 1, 1), values {0, 1}
  camelyonpatch_level_2_split_{split}_meta.csv
      columns coord_y, coord_x, tumor_patch, center_tumor_patch, wsi

The x and y files are published gzipped (``.h5.gz``); the md5 sums below are
those of the published files, as listed in the PCam README.
"""

from __future__ import annotations

from pathlib import Path

from pcam_jax.errors import DataError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
SPLIT_SIZES: dict[str, int] = {"train": 262_144, "valid": 32_768, "test": 32_768}
PATCH_SHAPE: tuple[int, int, int] = (96, 96, 3)
X_KEY = "x"
Y_KEY = "y"
META_COLUMNS: tuple[str, ...] = ("coord_y", "coord_x", "tumor_patch", "center_tumor_patch", "wsi")

ZENODO_BASE_URL = "https://zenodo.org/records/2546921/files"

# md5 of the nine published files (PCam README).
PCAM_MD5: dict[str, str] = {
    "camelyonpatch_level_2_split_train_x.h5.gz": "1571f514728f59376b705fc836ff4b63",
    "camelyonpatch_level_2_split_train_y.h5.gz": "35c2d7259d906cfc8143347bb8e05be7",
    "camelyonpatch_level_2_split_valid_x.h5.gz": "d8c2d60d490dbd479f8199bdfa0cf6ec",
    "camelyonpatch_level_2_split_valid_y.h5.gz": "60a7035772fbdb7f34eb86d4420cf66a",
    "camelyonpatch_level_2_split_test_x.h5.gz": "d5b63470df7cfa627aeec8b9dc0c066e",
    "camelyonpatch_level_2_split_test_y.h5.gz": "2b85f58b927af9964a4c15b8f7e8f179",
    "camelyonpatch_level_2_split_train_meta.csv": "5a3dd671e465cfd74b5b822125e65b0a",
    "camelyonpatch_level_2_split_valid_meta.csv": "3455fd69135b66734e1008f3af684566",
    "camelyonpatch_level_2_split_test_meta.csv": "67589e00a4a37ec317f2d1932c7502ca",
}


def x_name(split: str) -> str:
    """File name of the image array of `split`."""
    return f"camelyonpatch_level_2_split_{split}_x.h5"


def y_name(split: str) -> str:
    """File name of the label array of `split`."""
    return f"camelyonpatch_level_2_split_{split}_y.h5"


def meta_name(split: str) -> str:
    """File name of the meta CSV of `split`."""
    return f"camelyonpatch_level_2_split_{split}_meta.csv"


def split_paths(root: str | Path, split: str) -> tuple[Path, Path, Path]:
    """(x, y, meta) paths of `split` under `root`."""
    check_split(split)
    root = Path(root)
    return root / x_name(split), root / y_name(split), root / meta_name(split)


def check_split(split: str) -> None:
    """Raises DataError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


HOW_TO_GET_DATA = (
    "get the real PCam with `pcam-data download --out=DIR`, "
    "or write a synthetic one with `pcam-data synth --out=DIR`"
)
