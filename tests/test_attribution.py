"""Attribution maps: the sanity checks of Adebayo et al. (2018), equivariance, completeness, and
pcam-explain.

Two tiny p4 ResNets are trained once for this module on a synthetic PCam where tumour cells lie
in the centre 32x32 (``pcam_jax.data.synth``): one on the true labels, one on shuffled labels.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from pcam_jax import infer, models, train
from pcam_jax.data import synth
from pcam_jax.equivariant import groups
from pcam_jax.errors import ModelError
from pcam_jax.explain import attribution
from pcam_jax.explain import figures as explain
from pcam_jax.infer.evaluate import evaluate
from pcam_jax.workdir import read_config
from tests.helpers import run_in_process, tiny_config

SIZES = {"train": 512, "valid": 128, "test": 16}
TINY_P4 = {"widths": (4, 8, 8, 16)}
AREA_SHARE = (32 / 96) ** 2  # what an evenly spread map puts in the centre
# Rank correlation with the trained model's maps that a fully re-initialised model must stay
# under. 0.3 is the conventional edge of a weak correlation; the methods measured here score
# -0.09 to 0.09, while a map that ignores the model (the edge map below) scores 1.0 and the
# magnitude form of integrated gradients, which keeps an image of the input (|x - b|), 0.57.
RANDOMISED_MAX_CORRELATION = 0.3


def _split(root: Path, split: str, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5") as f:
        x = np.asarray(f["x"][:n])
    with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5") as f:
        y = np.asarray(f["y"][:n]).reshape(-1)
    return x, y


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The synthetic PCam, and a copy whose training labels are permuted."""
    base = tmp_path_factory.mktemp("attribution")
    root, shuffled = base / "pcam", base / "pcam_shuffled"
    synth.write_synthetic_pcam(root, sizes=SIZES, seed=0)
    shutil.copytree(root, shuffled)
    with h5py.File(shuffled / "camelyonpatch_level_2_split_train_y.h5", "r+") as f:
        f["y"][...] = np.random.default_rng(0).permutation(np.asarray(f["y"]))
    return {"root": root, "shuffled": shuffled, "base": base}


def _train(root: Path, workdir: Path) -> Path:
    c = tiny_config(root, "p4resnet", **TINY_P4)
    c.batch_size = 32
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 150
    c.log_every_steps = 50
    c.ema_decay = 0.0
    train.train_and_evaluate(c, workdir)
    return workdir


@pytest.fixture(scope="module")
def models_pair(data) -> dict[str, infer.LoadedModel]:
    trained = _train(data["root"], data["base"] / "trained")
    shuffled = _train(data["shuffled"], data["base"] / "shuffled")
    return {
        "trained": infer.load_model(str(trained), "last"),
        "shuffled": infer.load_model(str(shuffled), "last"),
        "trained_workdir": trained,
    }


@pytest.fixture(scope="module")
def tumour_patches(data) -> np.ndarray:
    x, y = _split(data["root"], "valid")
    return x[y == 1][:24]


def edge_map(images: np.ndarray) -> np.ndarray:
    """A deliberately broken 'attribution': the gradient magnitude of the grey image (Sobel).
    It never looks at the model, so the randomisation check must catch it."""
    from scipy import ndimage

    grey = images.astype(np.float32).mean(-1)
    return np.hypot(ndimage.sobel(grey, axis=1), ndimage.sobel(grey, axis=2))


def _ig_magnitude(loaded: infer.LoadedModel, images: np.ndarray) -> np.ndarray:
    """sum_c |IG_c|, the magnitude form that keeps an image of the input."""
    key = ("ig magnitude",)
    if key not in loaded.compiled_fns:
        loaded.compiled_fns[key] = jax.jit(
            lambda v, x: attribution.integrated_gradients(
                loaded.model, v, loaded.preprocess, x, signed=True
            )
        )
    return np.abs(np.asarray(loaded.compiled_fns[key](loaded.variables, images))).sum(-1)


def _randomised(loaded: infer.LoadedModel, top: set[str]) -> infer.LoadedModel:
    """`loaded` with the parameters and statistics of the modules in `top` re-initialised (the
    compiled attribution functions are shared: same shapes, new values)."""
    fresh = models.init_variables(loaded.model, jax.random.key(123), (1, 96, 96, 3))
    variables = jax.device_get(loaded.variables)
    new = {
        col: {name: (fresh[col][name] if name in top else v) for name, v in tree.items()}
        for col, tree in variables.items()
    }
    return dataclasses.replace(loaded, variables=new)


@pytest.mark.slow
def test_maps_decorrelate_as_layers_are_randomised_top_down(models_pair, tumour_patches):
    trained = models_pair["trained"]
    x = tumour_patches[:8]
    # module names in call order; the cascade re-initialises from the classifier down
    order = list(
        dict.fromkeys(
            e["layer"].split("/")[0]
            for e in attribution.feature_layers(trained.model, trained.variables)
        )
    )
    order = [n for n in order if n in trained.variables["params"]] + ["classifier"]
    cascade = {"classifier": order[-1:], "top half": order[len(order) // 2 :], "all": order}
    base = {m: attribution.attribute(trained, x, m) for m in attribution.METHODS}
    base_ig_magnitude = _ig_magnitude(trained, x)
    correlations: dict[str, dict[str, float]] = {}
    for stage, names in cascade.items():
        random = _randomised(trained, set(names))
        correlations[stage] = {
            m: float(
                attribution.rank_correlation(base[m], attribution.attribute(random, x, m)).mean()
            )
            for m in attribution.METHODS
        }
        correlations[stage]["edge map"] = float(
            attribution.rank_correlation(edge_map(x), edge_map(x)).mean()
        )
        correlations[stage]["ig magnitude"] = float(
            attribution.rank_correlation(base_ig_magnitude, _ig_magnitude(random, x)).mean()
        )
    print(correlations)
    for m in attribution.METHODS:
        assert correlations["all"][m] < RANDOMISED_MAX_CORRELATION, (m, correlations)
        # randomising the classifier alone already changes what the map says
        assert correlations["classifier"][m] < 0.9, (m, correlations)
    # the negative controls: a model-blind map, and the magnitude form of integrated gradients
    assert correlations["all"]["edge map"] == pytest.approx(1.0)
    assert correlations["all"]["ig magnitude"] > RANDOMISED_MAX_CORRELATION


def test_trained_maps_concentrate_in_the_centre_and_shuffled_labels_do_not(
    models_pair, data, tumour_patches
):
    x, y = _split(data["root"], "valid")
    auc = {k: roc_auc_score(y, models_pair[k].predict_images(x)) for k in ("trained", "shuffled")}
    assert auc["trained"] > 0.95 and auc["shuffled"] < 0.8, auc
    mass = {
        k: {
            m: float(
                np.nanmean(
                    attribution.centre_mass(
                        attribution.attribute(models_pair[k], tumour_patches, m)
                    )
                )
            )
            for m in attribution.METHODS
        }
        for k in ("trained", "shuffled")
    }
    print(AREA_SHARE, mass)
    for m in attribution.METHODS:
        assert mass["trained"][m] > 2 * AREA_SHARE, (m, mass)
        assert mass["shuffled"][m] < mass["trained"][m] / 1.5, (m, mass)


def _random_model(name: str, **fields) -> infer.LoadedModel:
    """A LoadedModel of an untrained `name` with every weight and statistic perturbed (no
    zero-initialised scale hides a branch)."""
    model = models.create(name, **fields)
    v = jax.device_get(models.init_variables(model, jax.random.key(1), (1, 96, 96, 3)))
    # perturbed in numpy: jax.random op by op compiles a program per leaf shape
    rng = np.random.default_rng(2)
    v = jax.tree.map(lambda a: (a + 0.3 * rng.normal(size=a.shape)).astype(np.float32), v)
    v = {**v, "batch_stats": jax.tree.map(np.abs, v["batch_stats"])}
    config = ml_collections.ConfigDict({"model": {"name": name, **fields}})
    pre = infer.Preprocess((180.0, 140.0, 180.0), (50.0, 50.0, 50.0))
    return infer.LoadedModel(config, model, v, pre, {"patch_size": 96, "mpp": 0.972})


def _equivariance_errors(loaded, images, method, group) -> list[float]:
    maps = attribution.attribute(loaded, images, method)
    errors = []
    for g in range(1, groups.group_order(group)):
        moved = np.ascontiguousarray(groups.transform_plane(images, group, g))
        expected = groups.transform_plane(maps, group, g)
        got = attribution.attribute(loaded, moved, method)
        errors.append(float(np.abs(got - expected).max() / np.abs(maps).max()))
    return errors


def test_p4m_maps_move_with_the_patch_and_plain_maps_do_not(tumour_patches):
    x = tumour_patches[:2]
    p4m = _random_model("p4mresnet", widths=(2, 2, 2, 2))
    plain = _random_model("resnet", widths=(4, 4, 4, 4))
    for method, tol in (("gradient", 1e-4), ("gradcam", 1e-4), ("integrated_gradients", 2e-2)):
        assert max(_equivariance_errors(p4m, x, method, "p4m")) < tol, method
        # negative control: the same check on a plain model fails for some transform
        assert max(_equivariance_errors(plain, x, method, "p4m")) > 0.1, method
    # smoothgrad draws its noise for the patch as given: equivariant in expectation only
    assert max(_equivariance_errors(p4m, x, "smoothgrad", "p4m")) > 1e-3


def test_integrated_gradients_add_up_to_the_score_change(models_pair, tumour_patches):
    m = models_pair["trained"]
    x = jnp.asarray(tumour_patches[:4])
    signed = attribution.integrated_gradients(m.model, m.variables, m.preprocess, x, 64, True)
    s = attribution.tumour_log_odds(m.model, m.variables, m.preprocess, x.astype(jnp.float32))
    b = jnp.broadcast_to(jnp.asarray(m.preprocess.mean, jnp.float32), x.shape)
    sb = attribution.tumour_log_odds(m.model, m.variables, m.preprocess, b)
    np.testing.assert_allclose(
        np.asarray(signed.sum((1, 2, 3))), np.asarray(s - sb), atol=0.1, rtol=0.05
    )


def test_layer_choice_and_bad_requests(models_pair, tumour_patches):
    m = models_pair["trained"]
    assert attribution.default_gradcam_layer(m.model, m.variables) == "stage1_block0_conv1"
    with pytest.raises(ModelError, match="stage1_block0_conv1"):
        attribution.attribute(m, tumour_patches[:1], "gradcam", layer="nope")
    with pytest.raises(ModelError, match="gradient, smoothgrad"):
        attribution.attribute(m, tumour_patches[:1], "occlusion")
    with pytest.raises(ModelError, match="uint8"):
        attribution.attribute(m, tumour_patches[:1].astype(np.float32), "gradient")


# --- pcam-explain -------------------------------------------------------------------------------


def _image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        (root / str(int(lab))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / str(int(lab)) / f"patch{i}.png")
    return root


@pytest.mark.slow
def test_pcam_explain_panels_gallery_and_group_views(models_pair, data, tmp_path):
    workdir = models_pair["trained_workdir"]
    x, y = _split(data["root"], "valid", 8)
    folder = _image_folder(tmp_path / "patches", x, y)

    r = run_in_process(
        "explain",
        str(folder),
        f"--out={tmp_path / 'panels'}",
        f"--model={workdir}",
        "--checkpoint=last",
        "--method=gradcam,gradient",
    )
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "panels" / "explanations.csv")))
    assert len(rows) == 8 and {row["label"] for row in rows} == {str(int(v)) for v in y}
    for row in rows:
        with Image.open(tmp_path / "panels" / row["panel"]) as im:
            assert im.size[0] > 3 * im.size[1] / 2  # patch and two maps side by side

    # a gallery from pcam-eval's predictions: the patches come from the workdir's data
    evaluate(read_config(workdir), workdir, split="valid", n_bootstrap=0)
    r = run_in_process(
        "explain",
        f"--predictions={workdir / 'eval' / 'valid_predictions.csv'}",
        f"--out={tmp_path / 'gallery'}",
        "--per_row=4",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "gallery" / "gallery.png").stat().st_size > 10_000
    picked = list(csv.DictReader(open(tmp_path / "gallery" / "gallery.csv")))
    tumour = [float(p["p_tumour"]) for p in picked if p["row"] == "confident_tumour"]
    assert len(tumour) == 4 and tumour == sorted(tumour, reverse=True)

    # a gallery from pcam-predict's CSV: the patches are read back from its paths
    predictions = tmp_path / "predictions.csv"
    r = run_in_process(
        "predict",
        folder,
        f"--model={workdir}",
        "--checkpoint=last",
        f"--out={predictions}",
        "--noprogress",
    )
    assert r.returncode == 0, r.stderr
    r = run_in_process(
        "explain",
        f"--predictions={predictions}",
        f"--model={workdir}",
        "--checkpoint=last",
        f"--out={tmp_path / 'gallery2'}",
        "--method=gradient",
    )
    assert r.returncode == 0, r.stderr
    picked = list(csv.DictReader(open(tmp_path / "gallery2" / "gallery.csv")))
    assert {p["row"] for p in picked} >= {"confident_tumour", "confident_normal"}

    r = run_in_process(
        "explain",
        str(folder / "1" / next(iter(sorted(p.name for p in (folder / "1").iterdir())))),
        "--group_views",
        f"--out={tmp_path / 'group'}",
        f"--model={workdir}",
        "--checkpoint=last",
        "--transform=1",
    )
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (tmp_path / "group").iterdir()} == {"filters.png", "orbit.png"}
    assert "p4 model" in r.stdout


def test_pcam_explain_bad_inputs_leave_nothing(models_pair, tmp_path):
    out = tmp_path / "out"
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")
    r = run_in_process("explain", f"--predictions={bad_csv}", f"--out={out}")
    assert r.returncode != 0 and "bad.csv" in r.stderr and "p_tumour" in r.stderr
    r = run_in_process("explain", str(tmp_path / "missing.png"), f"--out={out}")
    assert r.returncode != 0 and "missing.png" in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_orbit_views_exact_for_group_models_not_for_plain(tumour_patches):
    image = tumour_patches[0]
    p4m = _random_model("p4mresnet", widths=(2, 2, 2, 2))
    plain = _random_model("resnet", widths=(4, 4, 4, 4))
    for h in (1, 4, 7):
        assert (
            explain.orbit_views(p4m, image, "stage1_block0_conv1", h)["relative_max_difference"]
            < 1e-5
        )
        assert (
            explain.orbit_views(plain, image, "stage1_block0_conv1", h)["relative_max_difference"]
            > 0.1
        )
    poses = explain.lifting_filter_poses(p4m)
    assert poses.shape[1] == 8
    np.testing.assert_array_equal(poses[:, 1], np.rot90(poses[:, 0], 1, axes=(1, 2)))


def test_gallery_selection_rows():
    p = np.array([0.9, 0.2, 0.6, 0.1, 0.8, 0.4])
    labels = np.array([1, 0, 0, 1, 1, 0])
    rows = explain.gallery_selection(p, labels, k=2)
    assert rows["confident_tumour"].tolist() == [0, 4]
    assert rows["confident_normal"].tolist() == [1, 5]
    assert rows["false_positives"].tolist() == [2]  # normal with p >= 0.5
    assert rows["false_negatives"].tolist() == [3]  # tumour with p < 0.5
    unlabelled = explain.gallery_selection(p, None, k=2)
    assert unlabelled["highest_p"].tolist() == [0, 4]
    assert unlabelled["lowest_p"].tolist() == [3, 1]
