"""The modern-trainer recipe: EMA of the weights, label smoothing, AdamW's decay mask and the
wall-clock budget (train_minutes) with its stored plan."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from pcam_jax import train
from pcam_jax import workdir as workdir_layout
from pcam_jax.errors import ModelError, TrainingError
from pcam_jax.infer.evaluate import evaluate
from pcam_jax.train import budget
from pcam_jax.train import step as train_step
from pcam_jax.train.optim import (
    kernels_only,
    length_free_before_hold,
    make_optimizer,
    make_schedule,
)
from pcam_jax.workdir import read_config
from tests.helpers import REPO, checkpoint_steps, load_config, tiny_config

TINY_RESNET = {"widths": (2, 4, 4, 4)}


def test_ema_decay_warms_up_then_holds():
    got = [float(train_step.ema_decay_at(0.999, t)) for t in (0, 1, 8, 90, 10**6)]
    assert got[0] == pytest.approx(0.1) and got[1] == pytest.approx(2 / 11)
    assert got[2] == pytest.approx(0.5) and got[3] == pytest.approx(0.91)
    assert got[4] == pytest.approx(0.999)
    ema = {"a": jnp.array([1.0, 3.0])}
    new = train_step.update_ema(ema, {"a": jnp.array([3.0, 3.0])}, jnp.float32(0.75))
    np.testing.assert_allclose(new["a"], [1.5, 3.0])


def test_label_smoothing_matches_the_formula():
    logits = jnp.array([[2.0, -1.0], [0.5, 0.25], [-3.0, 1.0]])
    labels = jnp.array([0, 1, 1])
    logp = jax.nn.log_softmax(logits)
    s = 0.1
    targets = (1 - s) * jax.nn.one_hot(labels, 2) + s / 2
    want = float(-(targets * logp).sum(-1).mean())
    assert float(train_step.cross_entropy(logits, labels, s)) == pytest.approx(want, rel=1e-6)
    plain = float(-logp[jnp.arange(3), labels].mean())
    assert float(train_step.cross_entropy(logits, labels)) == pytest.approx(plain, rel=1e-6)
    assert abs(want - plain) > 1e-3  # smoothing changes the loss


def test_adamw_decays_kernels_only():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,))}}
    assert kernels_only(params) == {"conv": {"kernel": True, "bias": False}}
    cfg = load_config(REPO / "configs" / "cpu_subset.py").optimizer
    assert cfg.name == "adamw" and cfg.weight_decay > 0
    tx = make_optimizer(cfg, optax.constant_schedule(0.1))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["conv"]["bias"]).max()) == 0.0  # no gradient, no decay
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.1 * cfg.weight_decay, rtol=1e-6)


def test_steps_for_budget_fits_steps_validations_and_checkpoints():
    steps = budget.steps_for_budget(600.0, 0.5, 10.0, 100, 2.0, 200)
    used = lambda s: s * 0.5 + math.ceil(s / 100) * 10.0 + math.ceil(s / 200) * 2.0  # noqa: E731
    assert used(steps) <= 600.0 < used(steps + 1)
    assert budget.steps_for_budget(1.0, 5.0, 10.0, 100, 2.0, 200) == 1


def _ema_run(root, tmp_path, **extra):
    c = tiny_config(root, "p4mresnet", **TINY_RESNET)
    c.ema_decay = 0.9
    c.label_smoothing = 0.1
    c.optimizer.name = "adamw"
    c.optimizer.weight_decay = 0.05
    for k, v in extra.items():
        c[k] = v
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    return c, workdir


def test_ema_is_checkpointed_validated_and_evaluated_by_default(synthetic_root, tmp_path):
    c, workdir = _ema_run(synthetic_root, tmp_path)
    for step in (3, 6):
        assert (workdir / "checkpoints" / str(step) / "ema").is_dir()
    config = read_config(workdir)
    ema = evaluate(config, workdir, checkpoint="last", split="valid", n_bootstrap=0)
    raw = evaluate(config, workdir, checkpoint="last", split="valid", n_bootstrap=0, weights="raw")
    assert (ema["weights"], raw["weights"]) == ("ema", "raw")
    assert ema["auc"] != raw["auc"] or ema["nll"] != raw["nll"]  # different weights
    # the periodic validation (the best-checkpoint metric) scored the EMA weights
    mngr = workdir_layout.checkpoint_manager(workdir, 3)
    record = mngr.restore(6, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    mngr.close()
    assert record["record"]["val"]["nll"] == pytest.approx(ema["nll"], rel=1e-5)
    assert record["record"]["ema_decay"] == 0.9
    with pytest.raises(ModelError, match="weights='best'"):
        workdir_layout.restore_model(workdir_layout.checkpoint_manager(workdir, 3), 6, None, "best")


def test_a_run_without_ema_evaluates_its_raw_weights(synthetic_root, tmp_path):
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    assert not (workdir / "checkpoints" / "2" / "ema").exists()
    config = read_config(workdir)
    assert evaluate(config, workdir, split="valid", n_bootstrap=0)["weights"] == "raw"


def test_bad_recipe_fields_are_refused(synthetic_root, tmp_path):
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.ema_decay = 1.0
    with pytest.raises(TrainingError, match="ema_decay=1.0"):
        train.train_and_evaluate(c, tmp_path / "a")
    c.ema_decay, c.label_smoothing = 0.0, 1.5
    with pytest.raises(TrainingError, match="label_smoothing=1.5"):
        train.train_and_evaluate(c, tmp_path / "b")


@pytest.mark.slow
def test_train_minutes_plans_the_steps_and_a_restart_keeps_them(synthetic_root, tmp_path):
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.train_minutes = 0.5  # hundreds of tiny steps: the plan is fixed at step 25 or later
    c.num_train_steps = 3  # provisional only
    c.eval_every_steps = c.checkpoint_every_steps = 40  # long enough to re-plan (> 4 x 25 steps)
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    plan = json.loads((workdir / "train_plan.json").read_text())
    assert plan["train_minutes"] == 0.5 and plan["step_seconds"] > 0
    assert plan["eval_seconds"] > 0 and plan["num_train_steps"] >= 1
    steps = checkpoint_steps(workdir)
    assert steps[-1] == plan["num_train_steps"]  # the run went exactly to the planned step
    # the probe's plan was provisional; the run fixed its length at the hold step from its own
    # measured rate
    assert plan["replanned"] is True and 25 < plan["hold_steps"] <= plan["num_train_steps"], plan
    assert plan["provisional_num_train_steps"] >= 1 and plan["measured_step_seconds"] > 0

    # A restart reads the stored plan instead of planning again: a hand-written plan of 5
    # steps is what a fresh workdir with that file runs, whatever train_minutes would give.
    other = tmp_path / "planned"
    other.mkdir()
    (other / "train_plan.json").write_text(json.dumps({"num_train_steps": 5, "train_minutes": 9}))
    c.train_minutes = 9.0
    train.train_and_evaluate(c, other)
    steps = checkpoint_steps(other)
    assert steps[-1] == 5
    (other / "train_plan.json").write_text(json.dumps({"num_train_steps": "many"}))
    with pytest.raises(TrainingError, match="train_plan.json: no valid num_train_steps"):
        train.train_and_evaluate(c, other)


def test_max_train_steps_caps_the_budget_plan(synthetic_root, tmp_path):
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.train_minutes = 1.0  # far more than 7 steps need
    c.max_train_steps = 7
    workdir = tmp_path / "run"
    train.train_and_evaluate(c, workdir)
    plan = json.loads((workdir / "train_plan.json").read_text())
    assert plan["num_train_steps"] == 7 and plan["hold_steps"] <= 7
    steps = checkpoint_steps(workdir)
    assert steps[-1] == 7
    assert budget.capped(c, 100) == 7 and budget.capped(c, 5) == 5
    c.max_train_steps = 0
    assert budget.capped(c, 100) == 100


def test_a_provisional_plan_is_fixed_at_its_hold_step(synthetic_root, tmp_path):
    # A provisional plan (as the probe writes it) of 40 steps, fixed at step 30. The budget
    # (3 s) is spent by then, so the re-plan ends the run there.
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.train_minutes, c.eval_every_steps, c.checkpoint_every_steps = 0.05, 1000, 1000
    workdir = tmp_path / "run"
    workdir.mkdir()
    provisional = {
        "num_train_steps": 40,
        "train_minutes": 0.05,
        "hold_steps": 30,
        "replanned": False,
        "compile_seconds": 1.0,
        "eval_seconds": 0.1,
    }
    (workdir / "train_plan.json").write_text(json.dumps(provisional))
    train.train_and_evaluate(c, workdir)
    plan = json.loads((workdir / "train_plan.json").read_text())
    assert plan["replanned"] is True and plan["provisional_num_train_steps"] == 40
    assert plan["num_train_steps"] == 30
    steps = checkpoint_steps(workdir)
    assert steps[-1] == 30


@pytest.mark.slow
def test_the_late_check_shortens_a_run_that_fell_behind(synthetic_root, tmp_path, monkeypatch):
    # The re-plan at step 30 is made to choose 100 steps whatever the clock says; the late
    # check at 30 + 0.75 x 70 = 82 measures again. With 3 s of budget (spent by then) it cuts the
    # run at 82; with an hour it leaves the 100 steps alone (it never lengthens a run).
    def replan_to_100(config, plan, step, *args):
        return {**plan, "num_train_steps": 100, "replanned": True}

    monkeypatch.setattr(budget, "replan_steps_for_budget", replan_to_100)
    c = tiny_config(synthetic_root, "resnet", **TINY_RESNET)
    c.eval_every_steps, c.checkpoint_every_steps = 1000, 1000
    provisional = {
        "num_train_steps": 40,
        "hold_steps": 30,
        "replanned": False,
        "compile_seconds": 1.0,
        "eval_seconds": 0.1,
    }
    for minutes, end in ((0.05, 82), (60.0, 100)):
        c.train_minutes = minutes
        workdir = tmp_path / f"run{minutes}"
        workdir.mkdir()
        (workdir / "train_plan.json").write_text(
            json.dumps({**provisional, "train_minutes": minutes})
        )
        train.train_and_evaluate(c, workdir)
        plan = json.loads((workdir / "train_plan.json").read_text())
        assert plan["late_check"]["step"] == 82
        assert plan["late_check"]["planned_num_train_steps"] == 100
        assert plan["num_train_steps"] == end
        steps = checkpoint_steps(workdir)
        assert steps[-1] == end


def test_cosine_hold_makes_the_schedule_length_free_before_the_hold():
    cfg = SimpleNamespace(name="cosine", warmup_steps=10, final_fraction=0.0)
    short = make_schedule(cfg, 100, 1.0, hold_steps=40)
    long = make_schedule(cfg, 1000, 1.0, hold_steps=40)
    before = np.arange(0, 41)
    np.testing.assert_allclose([short(t) for t in before], [long(t) for t in before])
    assert float(short(5)) == pytest.approx(0.5) and float(short(25)) == pytest.approx(1.0)
    assert float(short(70)) == pytest.approx(0.5) and float(short(100)) == pytest.approx(0.0)
    assert float(long(70)) > 0.99  # after the hold the two lengths differ
    # without a hold (or one inside the warm-up) the schedule is optax's warm-up cosine
    plain = make_schedule(cfg, 100, 1.0)
    assert float(plain(55)) == pytest.approx(0.5) and float(plain(25)) < 1.0
    assert length_free_before_hold(cfg)
    assert not length_free_before_hold(SimpleNamespace(name="one_cycle"))
