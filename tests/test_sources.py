"""Data sources: PCam HDF5, image folders, Kaggle layout, and their bad-input errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import ml_collections
import numpy as np
import pytest
from PIL import Image

from pcam_jax.data import sources
from pcam_jax.data.pcam_format import split_paths
from pcam_jax.errors import DataError
from tests.helpers import random_patches, write_kaggle_layout


def _write_pngs(folder: Path, images: np.ndarray, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"patch{i:04d}{suffix}"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def folder_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """train/{normal,1} with 3 + 4 lossless PNGs; returns root, images, labels in source order."""
    normal, tumour = random_patches(3, 1), random_patches(4, 2)
    _write_pngs(tmp_path / "train" / "normal", normal)
    _write_pngs(tmp_path / "train" / "1", tumour)
    return tmp_path, np.concatenate([normal, tumour]), np.array([0, 0, 0, 1, 1, 1, 1])


# --- PCam HDF5 -------------------------------------------------------------------------------


def test_hdf5_source_reads_stored_patches(synthetic_root):
    src = sources.make_source("pcam_hdf5", synthetic_root, "valid")
    x_path, y_path, _ = split_paths(synthetic_root, "valid")
    with h5py.File(x_path) as fx, h5py.File(y_path) as fy:
        x, y = fx["x"][:], fy["y"][:].reshape(-1)
    assert len(src) == 64 == len(x)
    np.testing.assert_array_equal(src.labels, y)
    assert src.labels.dtype == np.int32
    for i in (0, 17, 63):
        item = src[i]
        np.testing.assert_array_equal(item["image"], x[i])
        assert item["label"] == y[i] and item["index"] == i
    np.testing.assert_array_equal(src.read_images(5, 9), x[5:9])
    meta = src.meta()
    assert meta is not None and len(meta["wsi"]) == 64
    np.testing.assert_array_equal(meta["center_tumor_patch"], y.astype(bool))


def test_hdf5_source_opens_file_lazily_once_per_process(synthetic_root):
    src = sources.PcamHdf5Source(synthetic_root, "test")
    assert src._file is None  # nothing open until the first read
    src[0]
    handle = src._file
    src[1], src[2]
    assert src._file is handle  # reused, not reopened per item
    clone = pickle.loads(pickle.dumps(src))  # what a grain worker receives
    assert clone._file is None
    np.testing.assert_array_equal(clone[3]["image"], src[3]["image"])
    src.close()


def _hdf5_pair(root: Path, x: np.ndarray, y: np.ndarray, split: str = "train") -> None:
    x_path, y_path, _ = split_paths(root, split)
    with h5py.File(x_path, "w") as f:
        f.create_dataset("x", data=x)
    with h5py.File(y_path, "w") as f:
        f.create_dataset("y", data=y)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.zeros((5, 1, 1, 1), np.uint8),
            r"_x\.h5 holds 4 patches but .*_y\.h5 holds 5 labels",
        ),
        (np.zeros((4, 64, 64, 3), np.uint8), np.zeros((4, 1, 1, 1), np.uint8), r"_x\.h5.*shape"),
        (np.zeros((4, 96, 96, 3), np.float32), np.zeros((4, 1, 1, 1), np.uint8), r"_x\.h5.*float"),
        (np.zeros((4, 96, 96, 3), np.uint8), np.zeros((4, 1), np.uint8), r"_y\.h5.*shape"),
        (
            np.zeros((4, 96, 96, 3), np.uint8),
            np.array([0, 1, 2, 1], np.uint8).reshape(4, 1, 1, 1),
            r"_y\.h5: 1 labels outside \{0, 1\} \(first at index 2: 2\)",
        ),
    ],
    ids=["length-mismatch", "wrong-shape", "wrong-dtype", "wrong-label-shape", "label-2"],
)
def test_hdf5_bad_files_name_the_file(tmp_path, x, y, match):
    _hdf5_pair(tmp_path, x, y)
    with pytest.raises(DataError, match=match):
        sources.make_source("pcam_hdf5", tmp_path, "train")


def test_hdf5_missing_file_says_how_to_get_data(synthetic_copy):
    split_paths(synthetic_copy, "test")[1].unlink()
    with pytest.raises(DataError, match=r"test_y\.h5: file not found.*pcam-data download.*synth"):
        sources.make_source("pcam_hdf5", synthetic_copy, "test")


def test_missing_root_and_unknown_source(tmp_path):
    with pytest.raises(DataError, match=r"data\.root .*nope.*not found.*pcam-data download"):
        sources.make_source("pcam_hdf5", tmp_path / "nope", "train")
    with pytest.raises(DataError, match=r"unknown data\.source 'lmdb'.*pcam_hdf5, folder, kaggle"):
        sources.make_source("lmdb", tmp_path, "train")
    with pytest.raises(DataError, match=r"unknown split 'val'"):
        sources.make_source("pcam_hdf5", tmp_path, "val")


def test_truncated_hdf5_is_reported(synthetic_copy):
    x_path = split_paths(synthetic_copy, "train")[0]
    data = x_path.read_bytes()
    x_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"train_x\.h5: .*truncated or corrupt.*re-download"):
        sources.make_source("pcam_hdf5", synthetic_copy, "train")


def test_not_an_hdf5_file(synthetic_copy):
    split_paths(synthetic_copy, "valid")[1].write_text("not hdf5")
    with pytest.raises(DataError, match=r"valid_y\.h5: not a readable HDF5 file"):
        sources.make_source("pcam_hdf5", synthetic_copy, "valid")


def test_meta_with_wrong_rows_or_columns(synthetic_copy):
    meta_path = split_paths(synthetic_copy, "valid")[2]
    lines = meta_path.read_text().splitlines()
    meta_path.write_text("\n".join(lines[:-3]) + "\n")
    src = sources.make_source("pcam_hdf5", synthetic_copy, "valid")
    with pytest.raises(DataError, match=r"valid_meta\.csv: 61 rows but the split holds 64"):
        src.meta()
    meta_path.write_text(lines[0].replace("wsi", "slide") + "\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(DataError, match=r"valid_meta\.csv: missing meta column\(s\) \['wsi'\]"):
        src.meta()


# --- image folders ---------------------------------------------------------------------------


def test_folder_source_reads_both_class_folder_names(folder_root):
    root, images, labels = folder_root
    src = sources.make_source("folder", root, "train")
    assert len(src) == 7
    np.testing.assert_array_equal(src.labels, labels)
    for i in range(7):
        np.testing.assert_array_equal(src[i]["image"], images[i])  # PNG is lossless
    with pytest.raises(DataError, match=r"valid: split folder not found"):
        sources.make_source("folder", root, "valid")


def test_folder_empty_class_and_ambiguous_classes(folder_root):
    root, _, _ = folder_root
    (root / "train" / "0").mkdir()
    with pytest.raises(DataError, match=r"exactly one class folder of 0 or normal.*found 2"):
        sources.make_source("folder", root, "train")
    (root / "train" / "0").rmdir()
    for p in (root / "train" / "1").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"train/1: class folder holds no images"):
        sources.make_source("folder", root, "train")


def test_folder_unreadable_or_wrong_size_image(folder_root):
    root, _, _ = folder_root
    bad = root / "train" / "normal" / "patch0001.png"
    bad.write_bytes(b"\x89PNG garbage")
    src = sources.make_source("folder", root, "train")
    with pytest.raises(DataError, match=r"patch0001\.png: unreadable image.*remove or replace"):
        src[1]
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(bad)
    with pytest.raises(DataError, match=r"patch0001\.png: patch has shape \(50, 50, 3\)"):
        src[1]


def test_folder_source_on_real_subset(subset_root):
    src = sources.make_source("folder", subset_root, "valid")
    assert len(src) == 3000
    assert int(src.labels.sum()) == 1500
    item = src[0]
    assert item["image"].shape == (96, 96, 3) and item["image"].dtype == np.uint8
    assert 20 < item["image"].mean() < 250  # real tissue, not a blank
    assert src[len(src) - 1]["label"] == 1


# --- Kaggle ----------------------------------------------------------------------------------


def test_kaggle_split_is_seeded_disjoint_and_recorded(tmp_path):
    labels, images = write_kaggle_layout(tmp_path, 20)
    train = sources.make_source("kaggle", tmp_path, "train", kaggle_valid_fraction=0.25)
    valid = sources.make_source("kaggle", tmp_path, "valid", kaggle_valid_fraction=0.25)
    assert (len(train), len(valid)) == (15, 5)
    assert not set(train.ids) & set(valid.ids)
    assert set(train.ids) | set(valid.ids) == set(labels)
    for src in (train, valid):
        for i, image_id in enumerate(src.ids):
            assert src.labels[i] == labels[image_id]
        np.testing.assert_array_equal(src[0]["image"], images[src.ids[0]])
    assert train.split_record == valid.split_record
    assert train.split_record["n_valid"] == 5 and train.split_record["seed"] == 0
    again = sources.make_source("kaggle", tmp_path, "valid", kaggle_valid_fraction=0.25)
    assert again.ids == valid.ids
    other = sources.make_source(
        "kaggle", tmp_path, "valid", kaggle_valid_fraction=0.25, kaggle_split_seed=1
    )
    assert other.ids != valid.ids
    assert other.split_record["valid_ids_sha256"] != valid.split_record["valid_ids_sha256"]


def test_kaggle_bad_inputs(tmp_path):
    with pytest.raises(DataError, match=r"train_labels\.csv and train/"):
        sources.make_source("kaggle", tmp_path, "train")
    labels, _ = write_kaggle_layout(tmp_path, 6)
    with pytest.raises(DataError, match=r"no labelled test split"):
        sources.make_source("kaggle", tmp_path, "test")
    (tmp_path / "train" / f"{next(iter(labels))}.tif").unlink()
    with pytest.raises(DataError, match=r"train_labels\.csv: 1 labelled ids have no image"):
        sources.make_source("kaggle", tmp_path, "train")
    (tmp_path / "train_labels.csv").write_text("id,label\nabc,3\n")
    with pytest.raises(DataError, match=r"train_labels\.csv:2: label '3' is not 0 or 1"):
        sources.make_source("kaggle", tmp_path, "train")


def test_train_subset_is_class_balanced_nested_and_seeded(subset_root):
    config = ml_collections.ConfigDict(
        {
            "data": {
                "source": "folder",
                "root": str(subset_root),
                "train_split": "train",
                "kaggle_valid_fraction": 0.1,
                "kaggle_split_seed": 0,
                "train_examples": 1001,
                "train_subset_seed": 3,
            }
        }
    )
    full = sources.make_source("folder", subset_root, "train")
    small = sources.from_config(config, "train")
    assert isinstance(small, sources.SubsetSource) and len(small) == 1001
    assert np.bincount(small.labels).tolist() == [500, 501]  # the tumour class gets the odd one
    np.testing.assert_array_equal(small.labels, full.labels[small.indices])
    np.testing.assert_array_equal(small.read_image(7), full.read_image(int(small.indices[7])))
    config.data.train_examples = 3000
    bigger = sources.from_config(config, "train")
    assert set(small.indices) < set(bigger.indices)  # nested: the 3,000 hold the 1,001
    assert small.fingerprint() != bigger.fingerprint() != full.fingerprint()
    config.data.train_subset_seed = 4
    assert set(sources.from_config(config, "train").indices) != set(bigger.indices)
    assert len(sources.from_config(config, "valid")) == 3000  # only the training split
    assert len(pickle.loads(pickle.dumps(small))) == 1001  # grain's workers get it whole
    config.data.train_examples = 20_002
    with pytest.raises(DataError, match="train_examples=20002.*fewer than the 10,001"):
        sources.from_config(config, "train")


def test_train_subset_statistics_are_cached_beside_the_data_under_their_own_name(tmp_path):
    from pcam_jax.data import pipeline

    x = np.random.default_rng(0).integers(0, 256, (40, 96, 96, 3), dtype=np.uint8)
    for k, image in enumerate(x):
        folder = tmp_path / "train" / str(k % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{k}.png")
    full = sources.make_source("folder", tmp_path, "train")
    subset = sources.SubsetSource(full, 10, seed=1)
    a, b = pipeline.dataset_norm_stats(subset), pipeline.dataset_norm_stats(full)
    assert a.n == 10 and b.n == 40 and a.mean != b.mean
    cached = sorted(p.name for p in (tmp_path / ".pcam_jax_cache").iterdir())
    assert cached == ["norm_stats_folder_train.json", "norm_stats_folder_train_subset10_seed1.json"]
    assert pipeline.dataset_norm_stats(subset) == a  # read back, not recomputed over the full
