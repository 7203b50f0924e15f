"""Knowledge distillation (pcam_jax.train.distill): the loss, the loader's targets, the cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pcam_jax import infer, train
from pcam_jax.data import pipeline, sources
from pcam_jax.errors import TrainingError
from pcam_jax.infer.model import create_model, make_preprocess
from pcam_jax.runtime.distributed import make_mesh
from pcam_jax.train import distill
from pcam_jax.train.setup import create_state, global_batch, replicate
from pcam_jax.train.step import compile_train_step, distill_loss
from pcam_jax.workdir import DISTILL_TARGETS
from tests.helpers import TINY_CNN, tiny_config


def test_distill_loss_mixes_the_labels_and_the_teachers_cross_entropy():
    logits = jnp.array([[0.3, -1.2], [2.0, 0.5], [-0.4, 0.9]])
    t = jnp.array([0.9, 0.2, 0.5])
    log_p = np.asarray(jax.nn.log_softmax(logits))
    want_soft = -np.mean((1 - t) * log_p[:, 0] + t * log_p[:, 1])
    for w in (0.0, 0.3, 1.0):
        got = distill_loss(jnp.float32(1.7), logits, t, w)
        np.testing.assert_allclose(got, (1 - w) * 1.7 + w * want_soft, rtol=1e-6)


def test_a_teacher_equal_to_the_labels_trains_bitwise_as_the_labels_do(synthetic_root):
    # weight 1 against targets that are the one-hot labels is the plain cross-entropy: the same
    # update to the bit; targets that are not the labels (the control) change it
    config = tiny_config(synthetic_root, **TINY_CNN)
    config.label_smoothing = 0.0
    source = sources.from_config(config, "train")
    model = create_model(config)
    preprocess = make_preprocess(config, pipeline.compute_norm_stats(source))
    mesh = make_mesh()
    schedule = optax.constant_schedule(3e-3)
    batch = next(iter(pipeline.make_loader(source, batch_size=16, train=True)))
    key = jax.random.key(0)

    def params_after(weight: float, teacher: np.ndarray | None) -> list[np.ndarray]:
        c = config.copy_and_resolve_references()
        c.distill.weight = weight
        step = compile_train_step(c, preprocess, schedule, mesh)
        state = replicate(create_state(c, model, schedule), mesh)
        b = dict(batch) if teacher is None else {**batch, "teacher": teacher}
        state, _ = step(state, global_batch(mesh, b), key)
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(state.params)]

    plain = params_after(0.0, None)
    same = params_after(1.0, batch["label"].astype(np.float32))
    flipped = params_after(1.0, 1.0 - batch["label"].astype(np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(plain, same, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(plain, flipped, strict=True))


def test_the_loader_gives_each_patch_its_own_target(synthetic_root):
    source = sources.from_config(tiny_config(synthetic_root), "train")
    targets = np.random.default_rng(0).random(len(source)).astype(np.float32)
    loader = pipeline.make_loader(source, batch_size=16, train=True, targets=targets)
    for _, batch in zip(range(3), loader, strict=False):
        np.testing.assert_array_equal(batch["teacher"], targets[batch["index"]])


def test_a_student_run_caches_the_teachers_predictions_and_a_resume_reads_them(
    synthetic_root, tiny_cnn_run, tmp_path, monkeypatch
):
    teacher, _ = tiny_cnn_run
    config = tiny_config(synthetic_root, **TINY_CNN)
    config.distill.teacher = str(teacher)
    config.distill.weight = 0.5
    config.num_train_steps = 3
    workdir = tmp_path / "student"
    train.train_and_evaluate(config, workdir)
    source = sources.from_config(config, "train")
    images = np.stack([source[i]["image"] for i in range(len(source))])
    want = infer.load_model(teacher).predict_images(images, tta=True)
    np.testing.assert_allclose(cached_targets(workdir), want, atol=1e-5)
    # a resume reads the cache: the teacher is not loaded again
    monkeypatch.setattr(distill, "load_model", lambda spec: pytest.fail("teacher reloaded"))
    np.testing.assert_array_equal(
        distill.training_targets(config, workdir), cached_targets(workdir)
    )
    # another teacher setting is another key: computed anew
    config.distill.tta = False
    with pytest.raises(pytest.fail.Exception, match="teacher reloaded"):
        distill.training_targets(config, workdir)


def cached_targets(workdir):
    with np.load(workdir / DISTILL_TARGETS) as f:
        return f["p_tumour"]


def test_a_weight_without_a_teacher_is_refused_before_anything_is_written(synthetic_root, tmp_path):
    config = tiny_config(synthetic_root, **TINY_CNN)
    config.distill.weight = 0.5
    with pytest.raises(TrainingError, match="config.distill.teacher"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    config.distill.teacher = str(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="config.distill.teacher=.*nowhere"):
        train.train_and_evaluate(config, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()
