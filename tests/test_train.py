"""Training and evaluation binaries: configs, end-to-end runs, resume, devices, NaN, CLI errors."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pcam_jax import infer, models, train
from pcam_jax import workdir as workdir_layout
from pcam_jax.config import apply_overrides, load_config_file
from pcam_jax.errors import ModelError, PcamError, TrainingError
from pcam_jax.infer.evaluate import evaluate
from pcam_jax.workdir import read_config
from tests.helpers import (
    QUICKSTART,
    REPO,
    TINY_CNN,
    TINY_P4M,
    checkpoint_steps,
    child_env,
    final_params,
    load_config,
    run_cli,
    run_in_process,
    tiny_config,
    train_cmd,
)

CONFIGS = sorted((REPO / "configs").glob("*.py"))


# --- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_loads_and_names_a_model(path):
    c = load_config(path)
    assert c.model.name in models.names()
    for field in (
        "batch_size",
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
    ):
        assert isinstance(c[field], int) and c[field] > 0
    assert isinstance(c.seed, int)
    assert c.data.source in ("pcam_hdf5", "folder", "kaggle")
    infer.create_model(c)  # the model overrides are accepted


def test_config_overrides_and_unknown_fields():
    c = load_config(
        REPO / "configs" / "p4mdensenet.py",
        "--config.optimizer.learning_rate=0.01",
        "--config.model.growth_rate=4",
        "--config.augment.hue=0.05",
    )
    assert c.optimizer.learning_rate == 0.01 and c.model.growth_rate == 4
    assert c.augment.hue == 0.05 and c.batch_size == 64
    with pytest.raises(PcamError, match="did you mean 'optimizer.learning_rate'"):
        load_config(REPO / "configs" / "quickstart.py", "--config.optimizer.learnin_rate=1")


def test_study_hyperparameters():
    d = load_config(REPO / "configs" / "p4mdensenet.py")
    assert (d.optimizer.name, d.optimizer.learning_rate, d.batch_size) == ("adam", 1e-3, 64)
    assert d.num_train_steps == 100 * 262_144 // 64 and d.augment.d4
    i1 = load_config(REPO / "configs" / "inception_v3_run1.py")
    assert (
        i1.optimizer.name,
        i1.optimizer.learning_rate,
        i1.optimizer.momentum,
        i1.optimizer.eps,
    ) == ("rmsprop", 0.1, 0.9, 1.0)
    assert (i1.schedule.name, i1.schedule.decay_factor) == ("step", 0.16)
    assert i1.schedule.decay_every_steps == 4 * 262_144 // 64 and not i1.augment.d4
    i2 = load_config(REPO / "configs" / "inception_v3_run2.py")
    assert i2.optimizer.nesterov and i2.optimizer.name == "sgd" and i2.augment.d4
    a = load_config(REPO / "configs" / "allcnn.py")
    assert (a.optimizer.name, a.schedule.name) == ("rmsprop", "cyclic")


def test_apply_overrides_types_and_errors():
    c = load_config(REPO / "configs" / "quickstart.py")
    with c.unlocked():
        apply_overrides(
            c,
            [
                "--config.data.root=/x",
                "--config.batch_size=8",
                "--config.augment.d4=false",
                "--config.optimizer.eps=0.5",
            ],
        )
    assert (c.data.root, c.batch_size, c.augment.d4, c.optimizer.eps) == ("/x", 8, False, 0.5)
    with pytest.raises(PcamError, match="unknown config field 'data.rot'"):
        apply_overrides(c, ["--config.data.rot=/x"])
    with pytest.raises(PcamError, match="'eight' is not a valid int"):
        apply_overrides(c, ["--config.batch_size=eight"])


# --- end to end ------------------------------------------------------------------------------


def test_train_then_eval_end_to_end(tiny_cnn_run, tmp_path):
    workdir = Path(shutil.copytree(tiny_cnn_run[0], tmp_path / "run"))
    val = tiny_cnn_run[1]
    assert 0.0 <= val["auc"] <= 1.0 and val["n"] == 64
    assert checkpoint_steps(workdir) == [3, 6]
    assert list(workdir.glob("events.out.tfevents.*"))  # TensorBoard event file
    assert json.loads((workdir / "config.json").read_text())["model.name"] == "cnn"

    config = read_config(workdir)
    result = evaluate(config, workdir, checkpoint="last", split="test", n_bootstrap=200)
    out = workdir / "eval"
    summary = json.loads((out / "test.json").read_text())
    with open(out / "test_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["n"] == 64 and summary["checkpoint_step"] == 6
    labels = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["p_tumour"]) for r in rows])
    assert summary["auc"] == roc_auc_score(labels, p) == result["auc"]
    assert summary["accuracy"] == pytest.approx(np.mean((p >= 0.5) == labels))
    lo, hi = summary["auc_ci95"]
    assert lo <= summary["auc"] <= hi
    assert {"wsi", "coord_x", "tumor_patch"} <= set(rows[0])  # meta columns joined
    assert "auc_max" in summary["slides"] and (out / "test_slides.csv").is_file()
    for png in ("test_roc.png", "test_confusion.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_the_quickstart_config_learns_in_half_its_steps(synthetic_root, tmp_path):
    # its recipe (model, optimizer, schedule) run for 30 of its 60 steps (the schedule scaled
    # to them); the README's run, all 60 steps, is checked in a fresh venv before a release
    c = load_config(
        REPO / "configs" / "quickstart.py",
        f"--config.data.root={synthetic_root}",
        *(f"--config.{k}=30" for k in ("num_train_steps", "eval_every_steps")),
        "--config.checkpoint_every_steps=30",
    )
    val = train.train_and_evaluate(c, tmp_path / "run")
    assert val["auc"] > 0.85, val  # chance is 0.5; the study's G-CNN stayed at 0.5


def test_eval_on_a_root_holding_only_the_test_split(synthetic_root, tiny_cnn_run, tmp_path):
    workdir = Path(shutil.copytree(tiny_cnn_run[0], tmp_path / "run"))
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    for name in ("x.h5", "y.h5", "meta.csv"):
        shutil.copy(synthetic_root / f"camelyonpatch_level_2_split_test_{name}", only_test)
    config = read_config(workdir)
    config.data.root = str(only_test)
    result = evaluate(config, workdir, split="test", n_bootstrap=0)
    assert result["n"] == 64
    with pytest.raises(Exception, match=r"valid_x\.h5: file not found.*pcam-data"):
        evaluate(config, workdir, split="valid", n_bootstrap=0)


def test_tta_on_a_p4m_model_changes_nothing_but_float_error(synthetic_root, tiny_cnn_run, tmp_path):
    workdir = tmp_path / "run"
    c = tiny_config(synthetic_root, "p4mcnn", **TINY_P4M)
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 4
    train.train_and_evaluate(c, workdir)
    config = read_config(workdir)
    plain = evaluate(config, workdir, split="valid", n_bootstrap=0)
    tta = evaluate(config, workdir, split="valid", tta=True, n_bootstrap=0)

    def probs(name):
        with open(workdir / "eval" / f"{name}_predictions.csv", newline="") as f:
            return np.array([float(r["p_tumour"]) for r in csv.DictReader(f)])

    np.testing.assert_allclose(probs("valid_tta"), probs("valid"), atol=1e-5)
    assert abs(tta["auc"] - plain["auc"]) < 1e-4 and tta["accuracy"] == plain["accuracy"]
    # negative control: the plain CNN is not invariant, so TTA moves its predictions
    workdir2 = Path(shutil.copytree(tiny_cnn_run[0], tmp_path / "run_cnn"))
    config2 = read_config(workdir2)
    evaluate(config2, workdir2, split="valid", n_bootstrap=0)
    evaluate(config2, workdir2, split="valid", tta=True, n_bootstrap=0)
    with open(workdir2 / "eval" / "valid_predictions.csv", newline="") as f:
        a = np.array([float(r["p_tumour"]) for r in csv.DictReader(f)])
    with open(workdir2 / "eval" / "valid_tta_predictions.csv", newline="") as f:
        b = np.array([float(r["p_tumour"]) for r in csv.DictReader(f)])
    assert np.abs(a - b).max() > 1e-4


def test_changed_config_is_refused_and_neutral_fields_are_not(
    synthetic_root, tiny_cnn_run, tmp_path
):
    fresh = tmp_path / "fresh"
    with pytest.raises(ModelError, match="unknown model 'resnet50'"):
        train.train_and_evaluate(tiny_config(synthetic_root, "resnet50"), fresh)
    assert not (fresh / "config.json").exists()  # a failed start binds nothing
    workdir = Path(shutil.copytree(tiny_cnn_run[0], tmp_path / "run"))  # 6 steps, at 3 and 6
    changed = tiny_config(synthetic_root, **TINY_CNN)
    changed.optimizer.learning_rate = 0.5
    with pytest.raises(TrainingError, match=r"optimizer\.learning_rate: 0\.003 \(stored\) -> 0\.5"):
        train.train_and_evaluate(changed, workdir)
    longer = tiny_config(synthetic_root, **TINY_CNN)
    longer.num_train_steps = 8
    longer.eval_every_steps = longer.checkpoint_every_steps = 4
    longer.log_every_steps = 1
    train.train_and_evaluate(longer, workdir)  # resumes at step 6, runs to 8
    assert checkpoint_steps(workdir) == [3, 6, 8]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    workdir = tmp_path / "run"
    c = tiny_config(synthetic_root, **TINY_CNN)
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 1e-3
    c.schedule.name = "step"  # lr 1e-3 for steps 1-2, then inf (float32): step 3 diverges
    c.schedule.decay_factor = 1e60
    c.schedule.decay_every_steps = 2
    c.num_train_steps = 6
    c.log_every_steps = 5
    c.checkpoint_every_steps = 1
    c.eval_every_steps = 100
    with pytest.raises(TrainingError, match=r"diverged at step 3: loss .*not finite") as e:
        train.train_and_evaluate(c, workdir)
    assert "last good checkpoint (step 2) is untouched" in str(e.value)
    saved = checkpoint_steps(workdir)
    assert saved == [1, 2]
    config = read_config(workdir)
    result = evaluate(config, workdir, checkpoint="2", split="valid", n_bootstrap=0)
    assert np.isfinite(result["nll"]) and np.isfinite(result["auc"])


# --- processes: 1 vs 2 devices, CLI errors -----------------------------------


# A run killed (SIGKILL) and restarted ends bitwise equal to an uninterrupted one, raw weights and
# EMA: test_preemption.py::test_a_run_stopped_three_ways_in_turn_resumes_bitwise (augmentation
# in the loader); with the augmentation in the step, a resumed run's draws and parameters are
# bitwise those of an uninterrupted run:
# test_device_augment.py::test_device_runs_are_deterministic_resume_bitwise_and_read_plain_batches.


@pytest.mark.slow
def test_one_and_two_devices_give_the_same_parameters(synthetic_root, resume_config, tmp_path):
    # Plain SGD: the update is proportional to the gradient, so a gradient counted once
    # per device (2x on two devices) fails this. Adam would hide that (it is nearly
    # invariant to the gradient's scale) and amplifies float noise in near-zero gradients.
    # The augmentation runs in the step (augment.where=device), where each device augments its
    # shard: an example's draw must not depend on which device holds it. One device is this
    # process's (trained in-process); two are a child's.
    overrides = (
        "--config.num_train_steps=6",
        "--config.data.worker_count=0",
        "--config.optimizer.name=sgd",
        "--config.optimizer.momentum=0",
        "--config.optimizer.learning_rate=0.01",
        "--config.augment.where=device",
    )
    assert jax.local_device_count() == 1
    one, two = tmp_path / "dev1", tmp_path / "dev2"
    child = subprocess.Popen(  # the two runs at once: the child spends much of its life waiting
        train_cmd(resume_config, two, synthetic_root, *overrides),
        env=child_env(2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        config = load_config(resume_config, f"--config.data.root={synthetic_root}", *overrides)
        train.train_and_evaluate(config, one)
        stderr = child.communicate(timeout=600)[1]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0, stderr[-3000:]
    assert "; 2 devices" in stderr
    runs = {1: final_params(one), 2: final_params(two)}
    moved = 0.0
    for k, v in runs[1].items():
        np.testing.assert_allclose(runs[2][k], v, rtol=2e-4, atol=2e-5, err_msg=k)
        moved = max(moved, float(np.abs(v).max()))
    assert moved > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config.model.name=resnet50"], "unknown model 'resnet50'"),
        (["--config.optimizer.nme=adam"], "nme"),
        (["--config.data.source=lmdb"], "unknown data.source 'lmdb'"),
    ],
)
def test_pcam_train_bad_input(synthetic_root, tmp_path, args, message):
    # in-process: a child adds nothing to a one-line refusal (test_pcam_train_requires_workdir
    # runs the binary as a child)
    proc = run_in_process(
        "train",
        f"--config={QUICKSTART}",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.root={synthetic_root}",
        *args,
    )
    assert proc.returncode != 0 and message in proc.stderr


def test_pcam_train_requires_workdir():
    proc = run_cli("train", f"--config={QUICKSTART}")
    assert proc.returncode != 0 and "--workdir" in proc.stderr


def test_pcam_eval_bad_input(tiny_cnn_run, tmp_path):
    def run(*args):  # the binary's entry point in this process: refusals, then one evaluation
        return run_in_process("eval", *args)

    proc = run()
    assert proc.returncode != 0 and "--workdir is required" in proc.stderr
    proc = run(f"--workdir={tmp_path / 'missing'}")
    assert proc.returncode != 0 and "directory not found" in proc.stderr
    workdir = Path(shutil.copytree(tiny_cnn_run[0], tmp_path / "run"))
    proc = run(f"--workdir={workdir}", "--checkpoint=99")
    assert proc.returncode != 0 and "one of the saved steps [3, 6]" in proc.stderr
    proc = run(f"--workdir={workdir}", "--config.data.rooot=/x")
    assert proc.returncode != 0 and "unknown config field 'data.rooot'" in proc.stderr
    proc = run(f"--workdir={workdir}", f"--config.data.root={tmp_path}")
    assert proc.returncode != 0 and "test_x.h5: file not found" in proc.stderr
    proc = run(f"--workdir={workdir}", "--split=valid")
    assert proc.returncode == 0, proc.stderr
    assert "pcam-eval: valid n=64 AUC" in proc.stdout


def test_checkpoints_keep_the_last_k_and_the_best_by_validation_auc(tmp_path):
    import orbax.checkpoint as ocp

    mngr = workdir_layout.checkpoint_manager(tmp_path, keep=2)
    aucs = {1: 0.61, 2: 0.93, 3: 0.70, 4: None, 5: 0.80, 6: 0.75}
    for step, auc in aucs.items():
        mngr.save(
            step,
            args=ocp.args.Composite(record=ocp.args.JsonSave({"step": step})),
            metrics=None if auc is None else {"val_auc": auc},
            force=True,
        )
        mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 5, 6]  # best (0.93) and the last two
    assert workdir_layout.resolve_checkpoint(mngr, "best") == 2
    assert workdir_layout.resolve_checkpoint(mngr, "last") == 6
    assert workdir_layout.resolve_checkpoint(mngr, "5") == 5
    with pytest.raises(ModelError, match=r"one of the saved steps \[2, 5, 6\]"):
        workdir_layout.resolve_checkpoint(mngr, "3")
    mngr.close()


def test_bfloat16_compute_trains(synthetic_root, tmp_path):
    c = tiny_config(synthetic_root, "p4mcnn", **TINY_P4M)
    c.compute_dtype = "bfloat16"
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 3
    val = train.train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(val["nll"])
    params = final_params(tmp_path / "run")
    assert all(v.dtype == np.float32 for v in params.values())  # float32 master weights


def test_a_workdir_from_before_the_newer_fields_resumes_and_loads(tmp_path):
    """config.json written before data.train_examples, max_train_steps and augment.where existed
    reads as holding their legacy values (config.LEGACY_DEFAULTS); a changed value is refused."""
    from pcam_jax.config import LEGACY_DEFAULTS, flatten_config

    config = load_config_file(REPO / "configs/cpu_subset.py")
    config.unlock()
    config.augment.where = "host"  # what train_and_evaluate stores: the resolved path
    flat = flatten_config(config)
    old = {k: v for k, v in flat.items() if k not in LEGACY_DEFAULTS}
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    workdir_layout.check_config(config, tmp_path)  # resumes
    stored = read_config(tmp_path)
    assert stored.data.train_examples == 0 and stored.augment.where == "host"
    config.data.train_examples = 1000
    with pytest.raises(TrainingError, match=r"data.train_examples: 0 \(stored\) -> 1000"):
        workdir_layout.check_config(config, tmp_path)
