"""pcam-slide on synthetic whole-slide images made of REAL PCam patches.

Each slide is a mosaic of 96x96 patches from the subset's valid split (tumour patches inside a
known square, normal ones around it) with a white margin, written by tifffile as a tiled,
pyramidal TIFF with its resolution, which OpenSlide reads as a generic tiled TIFF.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import tracemalloc

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from pcam_jax import infer, models
from pcam_jax.camelyon.synthetic import GRID, MARGIN, mosaic, real_patches, write_slide
from pcam_jax.data import pipeline
from pcam_jax.errors import ModelError, SlideError
from pcam_jax.infer.metrics import binary_metrics
from pcam_jax.wsi.outputs import cell_polygons
from pcam_jax.wsi.run import SlideSettings, predict_slide, run_slide
from pcam_jax.wsi.slide import otsu_threshold
from tests.helpers import TINY_CNN, run_cli, run_in_process


def centre_cells() -> tuple[np.ndarray, np.ndarray]:
    """Cell (row, column) of the labelled centre of each mosaic patch (32-pixel cells)."""
    r, c = np.divmod(np.arange(GRID * GRID), GRID)
    return (MARGIN + r * 96 + 32) // 32, (MARGIN + c * 96 + 32) // 32


def random_model(name: str, **fields) -> infer.LoadedModel:
    """An untrained narrow model of `name` (a ResNet or the study's CNN) with PCam-like
    normalisation and its fields updated by `fields`, for geometry tests."""
    fields = {**({"widths": (2, 2, 2, 2)} if "resnet" in name else TINY_CNN), **fields}
    config = ml_collections.ConfigDict(
        {"model": {"name": name, **fields}, "compute_dtype": "float32"}
    )
    model = infer.create_model(config)
    variables = models.init_variables(model, jax.random.key(3), (2, 96, 96, 3))
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    norm = pipeline.NormStats(mean=(180.0, 140.0, 180.0), std=(50.0, 55.0, 45.0), n=1)
    info = {"patch_size": 96, "mpp": 0.972, "norm": norm.to_json(), "model": {"name": name}}
    return infer.LoadedModel(config, model, variables, infer.make_preprocess(config, norm), info)


@pytest.fixture(scope="module")
def patches(subset_root):
    return real_patches(subset_root)


@pytest.fixture(scope="module")
def bundled():
    """The bundled p4 ResNet: the bundled model that runs both modes."""
    return infer.load_model("bundled:p4resnet")


def test_aligned_lossless_slide_equals_patch_predictions(patches, bundled, tmp_path):
    images, labels = patches
    path = write_slide(tmp_path / "aligned.tif", mosaic(images), mpp=0.972, compression="zlib")
    result = predict_slide(path, bundled, SlideSettings(mode="windows"))
    assert result.mode == "windows"
    g = result.geometry
    assert (g.level, g.scale, g.cell0) == (0, 1.0, 32.0)
    rows, cols = centre_cells()
    from_slide = result.probabilities[rows, cols]
    predicted = np.isfinite(from_slide)  # centre cells that are mostly tissue (not pale fat)
    assert predicted.mean() > 0.7
    from_patches = bundled.predict_images(images)
    np.testing.assert_allclose(from_slide[predicted], from_patches[predicted], rtol=1e-5, atol=1e-6)
    # the background margin is not predicted; the mosaic is (but for pale cells)
    m = MARGIN // 32
    probs = result.probabilities
    assert np.isnan(probs[:m]).all() and np.isnan(probs[:, -m:]).all()
    assert np.isnan(probs[-m:]).all() and np.isnan(probs[:, :m]).all()
    assert np.isfinite(probs[m:-m, m:-m]).mean() > 0.7


def test_levels_padded_to_whole_tiles_are_read_where_their_pixels_are(patches, bundled, tmp_path):
    """A 0.243 um/px slide whose 4x level (the model's 0.972 um/px) is stored padded to whole
    tiles, as CAMELYON16's Utrecht scanners store their levels: OpenSlide's ratio is 3.75, its
    true downsample 4. Read at 4 (``wsi.pyramid``) it holds the mosaic pixel for pixel, so the
    cells equal the patch predictions as on the aligned slide; read at 3.75 they would come from
    a resampled, drifting image."""
    images, _ = patches
    big = np.repeat(np.repeat(mosaic(images), 4, 0), 4, 1)  # its 4x box reduction is the mosaic
    path = write_slide(tmp_path / "padded.tif", big, 0.243, downsamples=(1, 2, 4), padded=True)
    out = tmp_path / "out"
    r = run_in_process(
        "slide", path, f"--out={out}", "--model=bundled:p4resnet", "--mpp=0.243", "--noprogress"
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["level"], summary["padded_levels"]) == (2, [1, 2])
    assert summary["level_downsample"] == 4.0 and summary["resample_factor"] == 1.0
    assert summary["openslide_level_downsample"] == pytest.approx(3.75)
    probs = np.load(out / "probabilities.npy")
    rows, cols = centre_cells()
    predicted = np.isfinite(probs[rows, cols])
    assert predicted.mean() > 0.7
    np.testing.assert_allclose(
        probs[rows, cols][predicted],
        bundled.predict_images(images)[predicted],
        rtol=1e-5,
        atol=1e-6,
    )


def test_jpeg_slide_at_twice_the_resolution_finds_the_tumour(patches, bundled, tmp_path):
    images, labels = patches
    image = mosaic(images)
    big = np.asarray(Image.fromarray(image).resize((image.shape[1] * 2,) * 2, Image.BICUBIC))
    path = write_slide(tmp_path / "x20.tif", big, mpp=0.486, compression="jpeg")
    out = tmp_path / "out"
    summary = run_slide(path, out, bundled)
    assert summary["level"] == 0 and summary["resample_factor"] == pytest.approx(2.0)
    assert summary["cell_size_level0_px"] == pytest.approx(64.0)
    probs = np.load(out / "probabilities.npy")
    rows, cols = centre_cells()
    keep = np.isfinite(probs[rows, cols])
    auc = binary_metrics(labels.ravel()[keep], probs[rows, cols][keep], n_bootstrap=0)["auc"]
    print(f"cell-level AUC on the 20x-like JPEG slide: {auc:.3f}")
    assert auc > 0.8
    # tiles.csv: level-0 pixels of 64-pixel cells; one row per tissue cell
    with open(out / "tiles.csv") as f:
        tiles = list(csv.DictReader(f))
    assert len(tiles) == int(np.isfinite(probs).sum()) == summary["tissue_cells"]
    first = tiles[0]
    assert int(first["width"]) == 64 and int(first["x"]) % 64 == 0
    geo = json.loads((out / "tumour.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    for feature in geo["features"]:
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert ring.min() >= 0 and ring.max() <= big.shape[0]
        assert feature["properties"]["classification"]["name"] == "Tumor"
    assert (out / "heatmap.png").stat().st_size > 10_000
    assert summary["score_max"] >= summary["score_top10_mean"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "detections.csv",
        "heatmap.png",
        "probabilities.npy",
        "summary.json",
        "tiles.csv",
        "tumour.geojson",
    ]


@pytest.mark.parametrize("mode", ["dense", "windows"])
@pytest.mark.parametrize(
    "name, equivariant",
    [("p4resnet", True), ("p4mresnet", True), ("p4resnet_valid", True), ("resnet", False)],
)
def test_rotated_slide_gives_the_rotated_map(patches, tmp_path, name, equivariant, mode):
    model = random_model(name)
    image = mosaic(patches[0])
    maps = []
    for k in (0, 1):
        path = write_slide(tmp_path / f"rot{k}.tif", np.rot90(image, k).copy(), mpp=0.972)
        result = predict_slide(path, model, SlideSettings(mode=mode))
        assert result.mode == mode
        maps.append(result.probabilities)
    rotated = np.rot90(maps[0], 1)
    assert np.array_equal(np.isnan(rotated), np.isnan(maps[1]))
    finite = np.isfinite(rotated)
    assert maps[0][np.isfinite(maps[0])].std() > 1e-4  # the map is not flat
    diff = np.abs(rotated[finite] - maps[1][finite]).max()
    if equivariant:
        assert diff < 1e-5
    else:  # negative control: a plain CNN's map does not follow the rotation
        assert diff > 1e-3


def without_padding_effects(model: infer.LoadedModel) -> infer.LoadedModel:
    """`model` with every 3x3 kernel cut to its centre tap and the 4x4 stride-2 stem to its
    central 2x2 taps: no output then reads a padded pixel, in a window or in a block, and each
    cell's receptive field is exactly its 96-pixel window."""
    from flax import traverse_util

    flat = traverse_util.flatten_dict(model.variables["params"])
    for path, kernel in flat.items():
        if path[-1] == "kernel" and kernel.ndim == 4 and kernel.shape[0] > 1:
            keep = np.zeros(kernel.shape[:2], np.float32)
            lo = (kernel.shape[0] - 1) // 2
            keep[lo : kernel.shape[0] - lo, lo : kernel.shape[0] - lo] = 1
            flat[path] = kernel * keep[:, :, None, None]
    params = traverse_util.unflatten_dict(flat)
    return dataclasses.replace(model, variables={**model.variables, "params": params})


def test_dense_equals_windows_where_padding_plays_no_part(patches, tmp_path):
    # a model that never pads (models.valid_resnet) and a padded one whose kernels cannot reach
    # the padding agree; the padded one with its whole kernels is the control
    path = write_slide(tmp_path / "s.tif", mosaic(patches[0]), mpp=0.972)
    full = random_model("p4resnet")
    cases = ((random_model("p4resnet_valid"), True), (without_padding_effects(full), True))
    for model, agree in (*cases, (full, False)):
        dense, windows = (
            predict_slide(path, model, SlideSettings(mode=m)).probabilities
            for m in ("dense", "windows")
        )
        assert np.array_equal(np.isnan(dense), np.isnan(windows))
        finite = np.isfinite(dense)
        assert windows[finite].std() > 1e-4  # the map is not flat
        diff = np.abs(dense[finite] - windows[finite]).max()
        if agree:
            assert diff < 1e-5
        else:  # negative control: with padding, a block's cells see beyond their window
            assert diff > 1e-3


def test_dense_tta_turns_each_view_back(patches, tmp_path):
    # a p4m model is invariant, so its 8 views, each turned back, average to its own map; a
    # plain model's views differ (the control), so a view left unturned would show in both
    path = write_slide(tmp_path / "s.tif", mosaic(patches[0]), mpp=0.972)
    for name, invariant in (("p4mresnet", True), ("resnet", False)):
        model = random_model(name)
        plain, tta = (
            predict_slide(path, model, SlideSettings(mode="dense", tta=t)).probabilities
            for t in (False, True)
        )
        finite = np.isfinite(plain)
        assert plain[finite].std() > 1e-4
        diff = np.abs(plain[finite] - tta[finite]).max()
        assert diff < 1e-5 if invariant else diff > 1e-3, (name, diff)


def test_dense_mode_is_asked_for_and_refused_where_the_model_has_no_dense_form(patches, tmp_path):
    path = write_slide(tmp_path / "s.tif", mosaic(patches[0]), mpp=0.972)
    # the default, auto: dense only where it equals windows (a model that never pads)
    assert predict_slide(path, random_model("resnet")).mode == "windows"
    assert predict_slide(path, random_model("p4resnet_valid")).mode == "dense"
    summary = run_slide(path, tmp_path / "d", random_model("resnet"), SlideSettings(mode="dense"))
    assert summary["mode"] == "dense"
    assert json.loads((tmp_path / "d" / "summary.json").read_text())["mode"] == "dense"
    for model, why in (
        (random_model("resnet", input_crop=64), "no dense form"),
        (random_model("cnn"), "no dense form"),
    ):
        with pytest.raises(ModelError, match=f"--mode=dense: .*{why}"):
            predict_slide(path, model, SlideSettings(mode="dense"))
    with pytest.raises(ModelError, match=r"--mode=dense: --stride=24"):
        predict_slide(path, random_model("resnet"), SlideSettings(mode="dense", stride=24))


def _traced_peak(fn) -> int:
    """Peak bytes that Python and numpy allocations reach while `fn()` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_host_memory_stays_bounded_as_the_slide_grows(patches, tmp_path):
    """Predicting a slide holds a bounded number of blocks and windows, whatever its size: 4x
    the tissue adds next to nothing to the peak (the cell map: 4 bytes a cell). The preparation
    (thumbnail, tissue map) is left out: its thumbnail is capped at THUMBNAIL_SIZE a side."""
    from pcam_jax.wsi.predictors import block_stream
    from pcam_jax.wsi.slide import tissue_blocks

    model = random_model("p4resnet")
    tissue = mosaic(patches[0])[MARGIN:-MARGIN, MARGIN:-MARGIN]  # 768 x 768, all tissue
    prepared = {}
    for reps in (3, 6):  # 2,304 and 4,608 pixels a side: 5,184 and 20,736 cells
        path = write_slide(
            tmp_path / f"big{reps}.tif", np.tile(tissue, (reps, reps, 1)), 0.972, "jpeg"
        )
        prepared[reps] = SlideSettings().prepare(path, model)
    added = (6 * 768) ** 2 * 3 - (3 * 768) ** 2 * 3  # decoded bytes of the larger slide's extra
    try:
        peaks = {
            (reps, mode): _traced_peak(
                lambda p=prepared[reps], m=mode: SlideSettings(mode=m).predict(p, model)
            )
            for reps in prepared
            for mode in ("dense", "windows")
        }
        for mode in ("dense", "windows"):
            assert peaks[6, mode] - peaks[3, mode] < 0.05 * added, (mode, peaks)

        def hold_every_block(p):  # negative control: what the check catches
            return list(block_stream(p.slide, p.geometry, tissue_blocks(p.tissue)))

        held = {reps: _traced_peak(lambda p=p: hold_every_block(p)) for reps, p in prepared.items()}
        assert held[6] - held[3] > 0.5 * added, held
    finally:
        for p in prepared.values():
            p.close()


def test_bad_inputs_give_clear_errors_and_no_outputs(patches, bundled, tmp_path):
    image = mosaic(patches[0])
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="notes.txt: not a slide OpenSlide can read"):
        run_slide(text, tmp_path / "a", bundled)
    no_mpp = write_slide(tmp_path / "nompp.tif", image, mpp=None)
    with pytest.raises(SlideError, match="does not record its resolution.*--mpp"):
        run_slide(no_mpp, tmp_path / "b", bundled)
    blank = write_slide(tmp_path / "blank.tif", np.full_like(image, 250), mpp=0.972)
    with pytest.raises(SlideError, match="no tissue found"):
        run_slide(blank, tmp_path / "c", bundled)
    good = write_slide(tmp_path / "good.tif", image, mpp=0.972)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(SlideError, match="exists and is not an empty folder"):
        run_slide(good, busy, bundled)
    with pytest.raises(SlideError, match="parent folder"):
        run_slide(good, tmp_path / "no" / "such", bundled)
    with pytest.raises(SlideError, match="--stride=33"):
        run_slide(good, tmp_path / "d", bundled, SlideSettings(stride=33))
    for name in "abcd":
        assert not (tmp_path / name).exists()
    assert not list(tmp_path.glob(".*"))  # no temporary folders left
    # --mpp supplies what the slide lacks
    summary = run_slide(no_mpp, tmp_path / "e", bundled, SlideSettings(mpp=0.972))
    assert summary["level0_mpp"] == 0.972 and summary["tissue_cells"] > 0


def test_pcam_slide_cli(patches, tmp_path):
    path = write_slide(tmp_path / "s.tif", mosaic(patches[0]), mpp=0.972, compression="jpeg")
    out = tmp_path / "out"
    r = run_cli("slide", path, f"--out={out}", "--noprogress")
    assert r.returncode == 0, r.stderr
    assert "tissue cells" in r.stdout and (out / "summary.json").is_file()
    # without --model: the bundle whose dense map equals its windows, which auto runs densely
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["model"], summary["mode"]) == ("p4resnet_valid", "dense")
    r = run_cli("slide", path, f"--out={out}", "--noprogress")  # out is not empty now
    assert r.returncode != 0 and "not an empty folder" in r.stderr


def test_otsu_and_polygons():
    rng = np.random.default_rng(0)
    values = np.clip(
        np.concatenate([rng.normal(0.05, 0.01, 500), rng.normal(0.6, 0.05, 500)]), 0, 1
    )
    t = otsu_threshold(values)
    assert (values[:500] < t).all() and (values[500:] >= t).all()  # it separates the modes
    mask = np.zeros((6, 7), bool)
    mask[1:5, 1:5] = True
    mask[2:3, 2:3] = False  # a hole
    mask[5, 6] = True  # a separate cell touching nothing
    mask[0, 0] = True  # touches the square only at a corner: its own region (4-connectivity)
    polygons = cell_polygons(mask)
    assert len(polygons) == 3
    square = max(polygons, key=len)
    assert len(square) == 2  # exterior and one hole
    assert sorted(square[0][:-1]) == [(1, 1), (1, 5), (5, 1), (5, 5)]
    assert sorted(square[1][:-1]) == [(2, 2), (2, 3), (3, 2), (3, 3)]


def test_a_signal_inside_a_deferred_block_is_raised_at_its_end():
    """stops_deferred: SIGTERM in the block lets the block finish, then raises Stopped; the
    control: the same signal outside the block stops at the very next statement."""
    import os
    import signal
    import threading

    from pcam_jax.runtime.stopping import Stopped, stop_on_signals, stops_deferred

    if threading.current_thread() is not threading.main_thread():
        pytest.fail("signal handlers need the main thread; run pytest without a threaded runner")
    reached = []
    with stop_on_signals(), pytest.raises(Stopped) as stopped:
        with stops_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("after the signal")
    assert reached == ["after the signal"] and stopped.value.signum == signal.SIGTERM
    reached.clear()
    with stop_on_signals(), pytest.raises(Stopped):
        os.kill(os.getpid(), signal.SIGTERM)
        reached.append("after the signal")
    assert reached == []


def test_a_stop_signal_inside_a_readers_start_leaves_no_read_running(monkeypatch):
    """A ThreadPoolExecutor starts a thread, then records it; a SIGTERM between the two (sent
    here right after the first reader starts) must still leave no read running once Stopped
    leaves block_stream: the caller closes the slide next, and OpenSlide aborts the process
    when a read is still in progress (seen once in CI)."""
    import os
    import signal
    import threading
    import time

    from pcam_jax.runtime.stopping import Stopped, stop_on_signals
    from pcam_jax.wsi import predictors

    in_progress, sent = [0], []
    lock = threading.Lock()

    def slow_read(slide, geom, row0, col0, n):
        with lock:
            in_progress[0] += 1
        time.sleep(0.3)
        with lock:
            in_progress[0] -= 1
        return np.zeros((4, 4, 3), np.uint8)

    start = threading.Thread.start

    def start_then_stop(thread):
        start(thread)
        if not sent:  # between the pool's start() and its record of the thread
            sent.append(thread.name)
            # SIGTERM, not SIGINT: a suite started as a background job inherits SIGINT ignored
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here, in the main thread

    monkeypatch.setattr(predictors, "read_block", slow_read)
    blocks = [(0, 16 * k, np.zeros((1, 2), int)) for k in range(6)]
    with stop_on_signals(), pytest.raises(Stopped):
        monkeypatch.setattr(threading.Thread, "start", start_then_stop)
        try:
            for _ in predictors.block_stream(None, None, blocks):
                pass
        finally:
            monkeypatch.setattr(threading.Thread, "start", start)
    assert sent and in_progress[0] == 0, (sent, in_progress)
