"""Hostile and careless inputs through the binaries: each is refused with one line naming the
file or field, no traceback, a non-zero status, and nothing written or changed: inputs stay
byte-identical, no output and no workdir is left behind.

The refusals run the binaries' entry points in this process (``helpers.run_in_process``: same
argv, stdout, stderr and status); the real-process path is checked once against it
(``test_a_refusal_reads_the_same_from_a_child_process``) and kept where the process itself is
the point (a folder the OS refuses to write, a killed run's leftovers)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pcam_jax.camelyon.synthetic import write_slide
from pcam_jax.data.pcam_format import split_paths
from pcam_jax.runtime import files
from tests.helpers import QUICKSTART, run_cli, run_in_process

ERROR_LINE = re.compile(r"^(pcam-[a-z]+|pcam-data [a-z]+): error: ")


def refused(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Asserts a refusal: non-zero status, no traceback, exactly one error line, holding every
    needle; returns that line."""
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if ERROR_LINE.match(line)]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def digest(*paths: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def patches(synthetic_root: Path, tmp_path: Path) -> Path:
    """A folder with two PNG patches and a PCam HDF5 pair (8 patches) to predict."""
    folder = tmp_path / "in"
    folder.mkdir()
    x_path, y_path, _ = split_paths(synthetic_root, "valid")
    with h5py.File(x_path) as f:
        x = np.asarray(f["x"][:8])
    for i in range(2):
        Image.fromarray(x[i]).save(folder / f"p{i}.png")
    shutil.copy(x_path, folder / "v_x.h5")
    with h5py.File(y_path) as f, h5py.File(folder / "v_y.h5", "w") as g:
        g["y"] = np.asarray(f["y"])
    return folder


# --- outputs that would destroy inputs ---------------------------------------------------


@pytest.mark.parametrize("target", ["v_x.h5", "v_y.h5", "p0.png", "link.png"])
def test_predict_refuses_an_output_that_is_an_input(patches, target):
    (patches / "link.png").symlink_to(patches / "p1.png")
    before = digest(*(p for p in patches.iterdir() if p.is_file()))
    inputs = [patches / "v_x.h5", patches / "p0.png", patches / "p1.png"]
    r = run_in_process("predict", *inputs, f"--out={patches / target}", "--progress=false")
    refused(r, f"--out={patches / target}", "is one of the inputs")
    assert digest(*(p for p in patches.iterdir() if p.is_file())) == before


def test_a_refusal_reads_the_same_from_a_child_process(patches, tmp_path):
    args = ("predict", patches / "p0.png", f"--out={tmp_path / 'missing' / 'p.csv'}")
    child, here = run_cli(*args), run_in_process(*args)
    assert (child.returncode, child.stdout) == (here.returncode, here.stdout) == (1, "")
    assert refused(child, "does not exist") == refused(here, "does not exist")


def test_predict_checks_its_output_folder_before_predicting(patches, tmp_path):
    r = run_in_process("predict", patches / "p0.png", f"--out={tmp_path / 'missing' / 'p.csv'}")
    refused(r, "missing", "does not exist")


def test_predict_refuses_labels_outside_0_1(patches):
    with h5py.File(patches / "v_y.h5", "a") as f:
        y = np.asarray(f["y"])
        y[3] = 2
        f["y"][...] = y
    out = patches.parent / "p.csv"
    r = run_in_process("predict", patches / "v_x.h5", f"--out={out}")
    refused(r, "v_y.h5", "outside {0, 1}", "index 3")
    assert not out.exists()


def test_predict_names_an_hdf5_file_of_the_wrong_shape(tmp_path):
    with h5py.File(tmp_path / "bad_x.h5", "w") as f:
        f["x"] = np.zeros((4, 96, 96), np.float32)
    r = run_in_process("predict", tmp_path / "bad_x.h5", f"--out={tmp_path / 'p.csv'}")
    refused(r, "bad_x.h5", "(4, 96, 96)", "float32")
    assert listing(tmp_path) == ["bad_x.h5"]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_predict_refuses_a_batch_size_below_one(patches, tmp_path, value):
    r = run_in_process(
        "predict", patches / "p0.png", f"--out={tmp_path / 'p.csv'}", f"--batch_size={value}"
    )
    refused(r, "--batch_size")
    assert not (tmp_path / "p.csv").exists()


# --- training configs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("--config.nope=1", "unknown config field 'nope'"),
        ("--config.batch_size=0", "config.batch_size=0"),
        ("--config.optimizer.learning_rate=-0.001", "config.optimizer.learning_rate=-0.001"),
        ("--config.augment.hue=0.9", "config.augment.hue=0.9"),
        ("--config.batch_size=eight", "--config.batch_size=eight"),
    ],
)
def test_train_refuses_bad_config_values_before_creating_the_workdir(
    synthetic_root, tmp_path, override, field
):
    workdir = tmp_path / "run"
    r = run_in_process(
        "train",
        f"--config={QUICKSTART}",
        f"--workdir={workdir}",
        f"--config.data.root={synthetic_root}",
        override,
    )
    refused(r, field)
    assert not workdir.exists()


def test_train_on_an_unwritable_place_is_one_line(synthetic_root):
    r = run_in_process(
        "train",
        f"--config={QUICKSTART}",
        "--workdir=/proc/pcam_jax_run",
        f"--config.data.root={synthetic_root}",
    )
    refused(r, "/proc/pcam_jax_run")


def test_export_checks_its_output_before_loading(tmp_path):
    (tmp_path / "exists").mkdir()
    r = run_in_process("export", f"--workdir={tmp_path / 'no_run'}", f"--out={tmp_path / 'exists'}")
    refused(r, "exists", "already exists")
    r = run_in_process(
        "export", f"--workdir={tmp_path / 'no_run'}", f"--out={tmp_path / 'a' / 'b'}"
    )
    refused(r, "does not exist")


def test_explain_refuses_a_limit_below_one(patches, tmp_path):
    out = tmp_path / "ex"
    r = run_in_process("explain", patches / "p0.png", f"--out={out}", "--limit=0")
    refused(r, "--limit")
    assert not out.exists()


# --- slides ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    image = np.full((512, 512, 3), 240, np.uint8)
    image[128:384, 128:384] = rng.integers(60, 200, (256, 256, 3), dtype=np.uint8)
    return write_slide(tmp_path_factory.mktemp("slide") / "s.tif", image, mpp=0.972)


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        ("--batch_size=0", "--batch_size"),
        ("--mpp=inf", "--mpp"),
        ("--mpp=nan", "--mpp"),
        ("--mpp=1000", "--mpp"),
        ("--top_k=0", "--top_k"),
        ("--threshold=2", "--threshold"),
        ("--tissue_threshold=-0.1", "--tissue_threshold"),
    ],
)
def test_slide_refuses_flags_out_of_range(slide, tmp_path, flag, needle):
    before = digest(slide)
    r = run_in_process("slide", slide, f"--out={tmp_path / 'out'}", flag, "--progress=false")
    refused(r, needle)
    assert listing(tmp_path) == [] and digest(slide) == before


def test_slide_with_a_damaged_tile_is_one_line_and_writes_nothing(tmp_path):
    import tifffile

    rng = np.random.default_rng(1)
    image = rng.integers(60, 200, (512, 512, 3), dtype=np.uint8)
    source = write_slide(tmp_path / "source.tif", image, mpp=0.972, compression="jpeg")
    with tifffile.TiffFile(source) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[3], page.databytecounts[3]
    data = bytearray(source.read_bytes())
    source.unlink()
    data[offset : offset + count] = b"\x00" * count  # a level-0 JPEG tile that cannot decode
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(bytes(data))
    r = run_in_process("slide", damaged, f"--out={tmp_path / 'out'}", "--progress=false")
    refused(r, str(damaged), "damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.tif"]


def test_a_stale_temporary_of_a_killed_run_is_removed_by_the_next_write(tmp_path):
    # the name a slide output's temporary folder gets, with a pid that no longer runs
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f".out.pcam-{files._host()}-{dead}.abcd1234.tmp"
    stale.mkdir()
    (stale / "tiles.csv").write_text("half written")
    with files.atomic_dir(tmp_path / "next") as tmp:
        (tmp / "a.txt").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next"]


# --- pcam-data ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--n_train=-5", "--n_valid=0", "--n_test=1"])
def test_synth_refuses_splits_too_small(tmp_path, flag):
    r = run_in_process("data", "synth", f"--out={tmp_path / 'd'}", flag)
    refused(r, flag.split("=")[0])
    assert not (tmp_path / "d").exists()


def test_verify_on_a_folder_layout_says_what_verify_checks(tmp_path):
    (tmp_path / "train" / "0").mkdir(parents=True)
    r = run_in_process("data", "verify", f"--root={tmp_path}")
    assert r.returncode == 1
    assert "folder layout" in r.stdout and "pcam-data convert --source=folder" in r.stdout


# --- file modes --------------------------------------------------------------------------


def test_outputs_respect_the_umask(patches, synthetic_root, tmp_path, slide):
    """With umask 022 every output is group- and world-readable: predictions (pcam-predict), a
    training workdir (config.json, checkpoint metadata), synthetic HDF5 files, slide outputs."""
    from pcam_jax import train
    from pcam_jax.config import load_config_file
    from pcam_jax.data import synth
    from pcam_jax.infer import load_model
    from pcam_jax.wsi.run import run_slide

    old = os.umask(0o022)
    try:
        csv = tmp_path / "p.csv"
        r = run_in_process("predict", patches / "p0.png", f"--out={csv}", "--progress=false")
        assert r.returncode == 0, r.stderr
        synth_dir = tmp_path / "synth"
        synth.write_synthetic_pcam(synth_dir, sizes={"train": 4, "valid": 4, "test": 4})
        workdir = tmp_path / "run"
        config = load_config_file(
            QUICKSTART,
            f"--config.data.root={synthetic_root}",
            "--config.num_train_steps=2",
            "--config.eval_every_steps=2",
            "--config.checkpoint_every_steps=2",
        )
        train.train_and_evaluate(config, workdir)
        out = tmp_path / "slide_out"
        run_slide(slide, out, load_model("bundled:p4resnet"))
    finally:
        os.umask(old)
    checked = [csv, workdir / "config.json", out, *out.iterdir(), *synth_dir.iterdir()]
    checked += [p for p in (workdir / "checkpoints").rglob("*") if "METADATA" in p.name]
    assert len(checked) > 12
    for path in checked:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o755 if path.is_dir() else 0o644
        assert mode & want == want, (path, oct(mode))


def test_training_refuses_a_third_class_folder(tmp_path, patches, synthetic_root):
    root = tmp_path / "folders"
    for split in ("train", "valid"):
        for label in ("0", "1", "2"):
            (root / split / label).mkdir(parents=True)
            shutil.copy(patches / "p0.png", root / split / label / "a.png")
    workdir = tmp_path / "run"
    r = run_in_process(
        "train",
        f"--config={QUICKSTART}",
        f"--workdir={workdir}",
        f"--config.data.root={root}",
        "--config.data.source=folder",
    )
    refused(r, str(root / "train" / "2"), "outside the two labels")


def test_predict_pads_a_short_input_only_to_the_device_count():
    # 6 patches with --batch_size=2048 once padded to 2,048 rows (1.8 GB); now to 6 (1 device)
    import jax

    from pcam_jax.infer import load_model

    model = load_model("bundled:p4resnet")
    shapes: list[tuple[int, ...]] = []
    fn = model.predict_fn(jax.sharding.Mesh(jax.devices(), ("data",)))

    def recording(variables, images):
        shapes.append(tuple(images.shape))
        return fn(variables, images)

    model._predict_fns[False] = recording
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 96, 96, 3), dtype=np.uint8)
    p = model.predict_images(images, batch_size=2048)
    rows = 6 + (-6) % jax.local_device_count()
    assert shapes == [(rows, 96, 96, 3)] and p.shape == (6,)
    # a longer input is cut into full batches and a short last one
    shapes.clear()
    model.predict_images(np.concatenate([images] * 3), batch_size=8)
    assert [s[0] for s in shapes] == [8, 8, 2 + (-2) % jax.local_device_count()]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="/proc: a folder nobody can write")
def test_unwritable_outputs_are_refused_before_the_work(patches, tmp_path):
    # /proc refuses new files even to root, for whom os.access says every folder is writable
    r = run_in_process("predict", patches / "v_x.h5", "--out=/proc/p.csv", "--progress=false")
    line = refused(r, "--out=/proc/p.csv", "cannot write")
    assert "patch/s" not in r.stderr, line  # refused before predicting
    r = run_in_process("export", f"--workdir={tmp_path / 'no_run'}", "--out=/proc/pcam_bundle")
    refused(r, "--out=/proc/pcam_bundle", "cannot write")
