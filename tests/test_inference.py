"""Loading models (workdirs, bundles, the bundled model), pcam-export and pcam-predict."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest
from PIL import Image

from pcam_jax import infer, train
from pcam_jax.data import sources
from pcam_jax.errors import InputError, ModelError, PcamError
from pcam_jax.infer.evaluate import evaluate
from pcam_jax.infer.export import code_commit, export
from pcam_jax.infer.patches import collect_inputs, predict_patches, write_csv
from pcam_jax.runtime.distributed import make_mesh
from pcam_jax.workdir import read_config
from tests.helpers import REPO, run_cli, tiny_config

TINY_RESNET = {"widths": (2, 4, 4, 4)}


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> Path:
    """A tiny resnet trained for 6 steps with EMA, evaluated on valid by pcam-eval's code."""
    workdir = tmp_path_factory.mktemp("inference") / "run"
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.ema_decay = 0.9
    train.train_and_evaluate(c, workdir)
    evaluate(read_config(workdir), workdir, split="valid", n_bootstrap=0)
    return workdir


def machine_paths(meta: dict, card: str) -> list[str]:
    """Absolute paths in a bundle's JSON strings and in its card's code spans."""
    found: list[str] = []

    def walk(v):
        if isinstance(v, (dict, list)):
            for x in v.values() if isinstance(v, dict) else v:
                walk(x)
        elif isinstance(v, str) and (v.startswith("/") or v[1:3] == ":\\"):
            found.append(v)

    walk(meta)
    return found + re.findall(r"`(/[^`]*)`", card)


def _valid_images(root: Path, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(root / "camelyonpatch_level_2_split_valid_x.h5") as f:
        x = np.asarray(f["x"][:n])
    with h5py.File(root / "camelyonpatch_level_2_split_valid_y.h5") as f:
        y = np.asarray(f["y"][:n]).reshape(-1)
    return x, y


def test_bundle_round_trip_predicts_like_the_workdir(trained, synthetic_root, tmp_path):
    bundle = export(trained, tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == [
        "MODEL.md",
        "bundle.json",
        "variables.msgpack",
    ]
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["format_version"] == infer.BUNDLE_FORMAT_VERSION
    assert meta["mpp"] == 0.972 and meta["patch_size"] == 96
    assert meta["source"]["weights"] == "ema" and meta["model"]["name"] == "resnet"
    assert meta["metrics"]["valid"]["n"] == 64  # pcam-eval's result for the same step
    card = (bundle / "MODEL.md").read_text()
    assert "Not a medical device" in card and "0.972 um/px" in card and "| valid |" in card
    # provenance without the exporting machine's paths: names, date, commit
    assert machine_paths(meta, card) == []
    assert str(trained) in json.dumps(infer.load_workdir(trained).info)  # the control
    assert meta["source"]["run"] == trained.name and f"`{trained.name}`" in card
    assert meta["source"]["dataset"] == synthetic_root.name == meta["training"]["data.root"]
    assert meta["source"]["exported"] in card
    assert meta["source"]["commit"] == code_commit() and (code_commit() or "unknown") in card
    if (REPO / ".git").exists() and shutil.which("git"):  # a checkout names its commit
        assert code_commit() is not None

    images, _ = _valid_images(synthetic_root)
    from_workdir = infer.load_workdir(trained).predict_images(images, batch_size=16)
    from_bundle = infer.load_model(bundle).predict_images(images, batch_size=16)
    np.testing.assert_array_equal(from_bundle, from_workdir)  # same weights, same program
    assert from_bundle.shape == (40,) and from_bundle.std() > 0
    # raw weights differ from the EMA
    raw = infer.load_workdir(trained, weights="raw").predict_images(images, batch_size=16)
    assert np.abs(raw - from_workdir).max() > 1e-6
    # the TTA of this plain model averages 8 views: a different function
    tta = infer.load_model(bundle).predict_images(images, batch_size=16, tta=True)
    assert np.abs(tta - from_bundle).max() > 1e-6


def test_float16_storage_is_checked_on_the_validation_split(trained, synthetic_root, tmp_path):
    full = export(trained, tmp_path / "full")
    half = export(trained, tmp_path / "half", storage_dtype="float16")
    meta = json.loads((half / "bundle.json").read_text())
    assert meta["storage_dtype"] == "float16" and meta["storage"]["n"] == 64
    assert 0 < meta["storage"]["max_abs_dp"] <= 1e-3  # the weights did change, within bounds
    assert "stored as float16" in (half / "MODEL.md").read_text()
    size = {b: (b / "variables.msgpack").stat().st_size for b in (full, half)}
    assert size[half] < 0.7 * size[full]  # 2 bytes a weight instead of 4, plus msgpack keys
    loaded = infer.load_model(half)
    assert {a.dtype for a in jax.tree_util.tree_leaves(loaded.variables)} == {np.dtype("float32")}
    images, _ = _valid_images(synthetic_root)
    p_full = infer.load_model(full).predict_images(images, batch_size=16)
    p_half = loaded.predict_images(images, batch_size=16)
    assert 0 < np.abs(p_half - p_full).max() <= 1e-3
    # refused where the check fails (a tolerance nothing meets) or the split is gone: no bundle
    import pcam_jax.infer.export as export_module

    tolerance = export_module.HALF_STORAGE_TOLERANCE
    try:
        export_module.HALF_STORAGE_TOLERANCE = 0.0
        with pytest.raises(ModelError, match=r"moves by up to .* export with --storage_dtype"):
            export(trained, tmp_path / "refused", storage_dtype="float16")
    finally:
        export_module.HALF_STORAGE_TOLERANCE = tolerance
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ModelError, match="--storage_dtype=bfloat16: use one of"):
        export(trained, tmp_path / "refused", storage_dtype="bfloat16")
    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    config = json.loads((moved / "config.json").read_text())
    config["data.root"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="validation split 'valid' is needed"):
        export(moved, tmp_path / "refused", storage_dtype="float16")
    assert not (tmp_path / "refused").exists()


def test_bad_bundles_give_clear_errors(trained, tmp_path):
    bundle = export(trained, tmp_path / "bundle")
    with pytest.raises(ModelError, match="already exists"):
        export(trained, bundle)
    with pytest.raises(ModelError, match="parent"):
        export(trained, tmp_path / "missing" / "bundle")
    assert not (tmp_path / "missing").exists()

    def altered(name: str, change) -> Path:
        copy = tmp_path / name
        copy.mkdir()
        for f in bundle.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        meta = json.loads((copy / "bundle.json").read_text())
        change(copy, meta)
        if (copy / "bundle.json").exists():
            (copy / "bundle.json").write_text(json.dumps(meta))
        return copy

    newer = altered("newer", lambda d, m: m.update(format_version=99, pcam_jax_version="9.0"))
    with pytest.raises(ModelError, match=r"format version 99 \(written by pcam_jax 9.0\)"):
        infer.load_model(newer)
    damaged = altered("damaged", lambda d, m: (d / "variables.msgpack").write_bytes(b"\x00" * 100))
    with pytest.raises(ModelError, match="checksum differs"):
        infer.load_model(damaged)
    wider = altered("wider", lambda d, m: m["model"].update(widths=[4, 4, 4, 4]))
    with pytest.raises(ModelError, match="do not fit model 'resnet'"):
        infer.load_model(wider)
    with pytest.raises(ModelError, match="neither a model bundle"):
        infer.load_model(tmp_path)
    with pytest.raises(ModelError, match="no checkpoints"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text((trained / "config.json").read_text())
        infer.load_model(tmp_path / "empty")


@pytest.mark.parametrize("name", sorted(infer.BUNDLED_MODELS))
def test_each_bundled_model_loads_by_name_and_has_a_card(name):
    path = infer.BUNDLED_MODELS[name]
    assert (path / "MODEL.md").is_file()
    model = infer.load_model(f"bundled:{name}")
    assert model.mpp == 0.972 and model.patch_size == 96
    assert model.info["metrics"]  # its validation figures travel with it
    meta = json.loads((path / "bundle.json").read_text())
    assert machine_paths(meta, (path / "MODEL.md").read_text()) == []
    # what the wheel carries: 0.3 MB for the p4 ResNet, 13.7 MB for the EfficientNet (float32:
    # float16 storage moves its p(tumour) by up to 8e-3 on valid, so pcam-export refuses it)
    assert sum(p.stat().st_size for p in path.iterdir()) < 15_000_000
    if name == infer.DEFAULT_BUNDLED:  # the default: no --model, or --model=bundled
        assert infer.load_model(None).info["source"]["bundle"] == str(path.resolve())
        assert infer.load_model("bundled").info["source"]["bundle"] == str(path.resolve())


def test_an_unknown_bundled_name_lists_the_bundled_models():
    with pytest.raises(ModelError, match="bundled:nothing: no bundled model .* bundled:p4resnet"):
        infer.load_model("bundled:nothing")


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def test_predict_reads_folders_files_and_hdf5_with_their_labels(trained, synthetic_root, tmp_path):
    images, labels = _valid_images(synthetic_root, 12)
    folder = tmp_path / "patches"
    for i, (im, y) in enumerate(zip(images, labels, strict=True)):
        _write_png(folder / ("tumor" if y else "normal") / f"p{i:02d}.png", im)
    loose = _write_png(tmp_path / "loose.png", images[0])
    h5 = synthetic_root / "camelyonpatch_level_2_split_valid_x.h5"
    refs = collect_inputs([folder, loose, h5])
    assert len(refs) == 12 + 1 + 64
    assert [r.label for r in refs[:12]] == sorted(labels.tolist())  # normal/ sorts first
    assert refs[12].label is None and refs[13].index == 0 and refs[13].label is not None
    model = infer.load_workdir(trained)
    p = predict_patches(model, refs, batch_size=16)
    # PNG is lossless: a file and its HDF5 row give the same probability
    direct = model.predict_images(images, batch_size=16)
    by_name = {r.path.name: q for r, q in zip(refs[:12], p[:12], strict=True)}
    np.testing.assert_allclose([by_name[f"p{i:02d}.png"] for i in range(12)], direct, rtol=1e-6)
    np.testing.assert_allclose(p[13:25], direct, rtol=1e-6)
    out = tmp_path / "out.csv"
    write_csv(out, refs, p)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "index", "label", "p_tumour"] and len(rows) == 77
    assert rows[12]["label"] == "" and rows[13]["index"] == "0"


def test_predict_patch_policy(trained, synthetic_root, tmp_path):
    images, _ = _valid_images(synthetic_root, 2)
    model = infer.load_workdir(trained)
    big = np.full((128, 140, 3), 255, np.uint8)
    big[16:112, 22:118] = images[0]  # the centre 96x96 is the patch
    refs = collect_inputs([_write_png(tmp_path / "big.png", big)])
    np.testing.assert_allclose(
        predict_patches(model, refs), model.predict_images(images[:1]), rtol=1e-6
    )
    grey = _write_png(tmp_path / "grey.png", images[1].mean(-1).astype(np.uint8))
    assert predict_patches(model, collect_inputs([grey])).shape == (1,)  # expanded to RGB
    small = _write_png(tmp_path / "small.png", images[1][:80])
    with pytest.raises(InputError, match=r"small.png: 96x80 pixels, smaller than"):
        predict_patches(model, collect_inputs([small]))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png: unreadable image"):
        predict_patches(model, collect_inputs([broken]))
    with pytest.raises(InputError, match="no such file"):
        collect_inputs([tmp_path / "nope"])
    assert issubclass(InputError, PcamError)


def test_pcam_predict_cli_stops_on_a_bad_file_and_writes_nothing(trained, tmp_path):
    folder = tmp_path / "in"
    _write_png(folder / "0" / "a.png", np.zeros((96, 96, 3), np.uint8))
    (folder / "1").mkdir()
    (folder / "1" / "b.png").write_bytes(b"broken")
    out = tmp_path / "p.csv"
    r = run_cli("predict", folder, f"--out={out}", f"--model={trained}", "--noprogress")
    assert r.returncode != 0 and "b.png: unreadable image" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".p.csv*"))


@pytest.mark.slow
def test_pcam_predict_on_the_real_valid_split_equals_pcam_eval(subset_root, tmp_path):
    """A bundled model, named on the command line, on real valid patches in the folder layout
    (the first 300 of each class of the subset's valid split, linked): pcam-predict's AUC and
    probabilities are pcam-eval's (same decoder, same model, same program)."""
    root = tmp_path / "pcam"
    for label in ("0", "1"):
        (root / "valid" / label).mkdir(parents=True)
        for jpg in sorted((subset_root / "valid" / label).glob("*.jpg"))[:300]:
            (root / "valid" / label / jpg.name).symlink_to(jpg)
    out = tmp_path / "valid.csv"
    r = run_cli(
        "predict", root / "valid", f"--out={out}", "--model=bundled:p4resnet", "--noprogress"
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 600
    model = infer.load_model("bundled:p4resnet")
    import ml_collections

    config = ml_collections.ConfigDict(
        {
            "data": {
                "source": "folder",
                "root": str(root),
                "read_threads": 2,
                "kaggle_valid_fraction": 0.1,
                "kaggle_split_seed": 0,
            },
            "eval_batch_size": 250,
        }
    )
    source = sources.from_config(config, "valid")
    mesh = make_mesh()
    fn = model.predict_fn(mesh)
    pred = infer.predict(fn, model.variables, infer.make_eval_loader(config, source), mesh)
    by_path = {
        str(source.files[i]): q for i, q in zip(pred["index"], pred["p_tumour"], strict=True)
    }
    got = np.array([float(row["p_tumour"]) for row in rows])
    want = np.array([by_path[row["path"]] for row in rows])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    from pcam_jax.infer.metrics import binary_metrics

    auc = binary_metrics(np.array([int(r["label"]) for r in rows]), got, n_bootstrap=0)["auc"]
    assert f"AUC {auc:.4f}" in r.stdout
    assert auc > 0.9
