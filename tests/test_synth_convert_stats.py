"""Synthetic PCam, folder/Kaggle -> HDF5 conversion, and data statistics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pcam_jax.data import convert, sources, stats, synth
from pcam_jax.data.pcam_format import META_COLUMNS, split_paths
from pcam_jax.errors import DataError
from tests.helpers import SMALL_SIZES, write_kaggle_layout


def test_synthetic_files_have_the_exact_pcam_format(synthetic_root):
    for split, n in SMALL_SIZES.items():
        x_path, y_path, meta_path = split_paths(synthetic_root, split)
        with h5py.File(x_path) as f:
            assert list(f.keys()) == ["x"]
            assert f["x"].shape == (n, 96, 96, 3) and f["x"].dtype == np.uint8
            assert f["x"].chunks == synth.X_CHUNKS
        with h5py.File(y_path) as f:
            assert list(f.keys()) == ["y"]
            assert f["y"].shape == (n, 1, 1, 1) and f["y"].dtype == np.uint8
            y = f["y"][:].reshape(-1)
        assert set(np.unique(y)) == {0, 1} and y.sum() == n // 2
        with open(meta_path, newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == list(META_COLUMNS) and len(rows) == n
        assert all(
            r["wsi"].startswith(f"camelyon16_{'test' if split == 'test' else 'train'}_")
            for r in rows
        )
        centre = np.array([r["center_tumor_patch"] == "True" for r in rows])
        np.testing.assert_array_equal(centre, y.astype(bool))


def test_synthesis_is_deterministic_by_seed():
    a = synth.make_split("valid", 6, seed=5)
    b = synth.make_split("valid", 6, seed=5)
    c = synth.make_split("valid", 6, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_synthetic_patches_look_like_h_and_e():
    images, labels, _ = synth.make_split("train", 16, seed=0)
    mean = images.reshape(-1, 3).mean(axis=0)
    # eosin-pink overall: red and blue above green, bright background
    assert mean[0] > mean[1] + 40 and mean[2] > mean[1] + 40 and mean.min() > 90
    # nuclei are dark purple: the darkest 2% of pixels have blue >= red and low green
    flat = images.reshape(-1, 3).astype(int)
    dark = flat[flat.sum(axis=1) < np.percentile(flat.sum(axis=1), 2)]
    assert dark[:, 2].mean() >= dark[:, 0].mean() and dark[:, 1].mean() < 100


def _rotation_invariant_features(images: np.ndarray) -> np.ndarray:
    """Histogram of the centre 32x32 region's darkness: a feature blind to orientation."""
    centre = images[:, 32:64, 32:64].astype(np.float32).mean(axis=-1)
    return np.stack([np.histogram(c, bins=16, range=(0, 255))[0] for c in centre]) / 1024.0


def test_synthetic_class_signal_is_learnable_and_rotation_invariant():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x_train, y_train, _ = synth.make_split("train", 300, seed=1)
    x_test, y_test, _ = synth.make_split("test", 200, seed=1)
    clf = LogisticRegression(max_iter=2000).fit(_rotation_invariant_features(x_train), y_train)
    rotated = np.rot90(x_test, 1, axes=(1, 2))
    p = clf.predict_proba(_rotation_invariant_features(x_test))[:, 1]
    p_rot = clf.predict_proba(_rotation_invariant_features(rotated))[:, 1]
    assert roc_auc_score(y_test, p) > 0.9
    np.testing.assert_allclose(p, p_rot, atol=1e-9)  # the signal does not depend on orientation
    # negative control: the same classifier on shuffled labels is at chance
    shuffled = np.random.default_rng(0).permutation(y_train)
    clf_null = LogisticRegression(max_iter=2000).fit(
        _rotation_invariant_features(x_train), shuffled
    )
    p_null = clf_null.predict_proba(_rotation_invariant_features(x_test))[:, 1]
    assert abs(roc_auc_score(y_test, p_null) - 0.5) < 0.15


# --- convert ---------------------------------------------------------------------------------


def _folder_dataset(root: Path, n_per_class: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = {}
    for split in ("train", "valid"):
        for label in ("0", "1"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n_per_class):
                image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
                Image.fromarray(image).save(folder / f"p{i:03d}.png")
                images[f"{split}/{label}/{i}"] = image
    return images


@pytest.mark.parametrize("gzip", [False, True])
def test_convert_folder_to_hdf5_round_trips(tmp_path, gzip, monkeypatch):
    monkeypatch.setattr(convert, "BLOCK", 7)  # several blocks, the last one partial
    _folder_dataset(tmp_path / "folder", 10)
    out = tmp_path / "hdf5"
    for split in ("train", "valid"):
        src = sources.make_source("folder", tmp_path / "folder", split)
        convert.write_pcam_split(src, out, split, gzip=gzip)
        converted = sources.make_source("pcam_hdf5", out, split)
        np.testing.assert_array_equal(converted.labels, src.labels)
        np.testing.assert_array_equal(converted.read_images(0, 20), src.read_images(0, 20))
        with h5py.File(split_paths(out, split)[0]) as f:
            assert f["x"].compression == ("gzip" if gzip else None)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".pcam")) == sorted(
        n
        for s in ("train", "valid")
        for n in (split_paths(out, s)[0].name, split_paths(out, s)[1].name)
    )


def test_convert_with_a_bad_image_leaves_no_partial_output(tmp_path):
    _folder_dataset(tmp_path / "folder", 4)
    (tmp_path / "folder" / "train" / "1" / "p002.png").write_bytes(b"broken")
    src = sources.make_source("folder", tmp_path / "folder", "train")
    out = tmp_path / "hdf5"
    with pytest.raises(DataError, match=r"p002\.png: unreadable image"):
        convert.write_pcam_split(src, out, "train")
    assert list(out.iterdir()) == []  # no x/y file, no temporary left behind


def test_convert_kaggle_writes_split_record(tmp_path):
    labels, _ = write_kaggle_layout(tmp_path / "kaggle", 10)
    src = sources.make_source("kaggle", tmp_path / "kaggle", "valid", kaggle_valid_fraction=0.3)
    written = convert.write_pcam_split(src, tmp_path / "out", "valid")
    record = json.loads(written[-1].read_text())
    assert record["split_record"]["n_valid"] == 3 and record["n"] == 3
    assert len(sources.make_source("pcam_hdf5", tmp_path / "out", "valid")) == 3


def test_convert_real_subset_valid_split(subset_root, tmp_path):
    src = sources.make_source("folder", subset_root, "valid")
    convert.write_pcam_split(src, tmp_path, "valid")
    converted = sources.make_source("pcam_hdf5", tmp_path, "valid")
    assert len(converted) == 3000 and int(converted.labels.sum()) == 1500
    for i in (0, 1499, 1500, 2999):
        np.testing.assert_array_equal(converted[i]["image"], src[i]["image"])


# --- stats -----------------------------------------------------------------------------------


def test_stats_counts_patches_and_slides(synthetic_root, tmp_path):
    result = stats.compute_stats(synthetic_root)
    assert result["total"] == 320
    for split, n in SMALL_SIZES.items():
        e = result["splits"][split]
        assert (e["n"], e["tumour"], e["normal"]) == (n, n // 2, n // 2)
        assert e["share"] == pytest.approx(n / 320)
        meta = sources.make_source("pcam_hdf5", synthetic_root, split).meta()
        assert e["wsis"] == len(set(meta["wsi"])) == e["tumour_wsis"] + e["normal_wsis"]
        assert e["tumour_wsis"] > 0 and e["normal_wsis"] > 0
    table = stats.format_table(result)
    assert "train        192   60.0%       96       96    50.0%" in table
    written = stats.write_figures(synthetic_root, result, tmp_path, samples=4)
    for path in written[:2]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(path).size[0] > 300
    assert json.loads(written[2].read_text())["total"] == 320


def test_slide_kind_from_name_or_patches():
    assert stats.slide_kind("camelyon16_train_tumor_012", False) == "tumour"
    assert stats.slide_kind("camelyon16_train_normal_003", True) == "normal"
    assert stats.slide_kind("camelyon16_test_001", True) == "tumour"
    assert stats.slide_kind("camelyon16_test_002", False) == "normal"


def test_stats_without_data(tmp_path):
    with pytest.raises(DataError, match=r"no PCam label files.*pcam-data download"):
        stats.compute_stats(tmp_path)
