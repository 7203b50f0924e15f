"""Knowledge distillation: a teacher's p(tumour) for each training patch, the loss's soft half.

With ``distill.weight`` w > 0 the loss of a training patch x with label y is

    (1 - w) * CE(y, smoothed by label_smoothing) + w * CE((1 - t(x), t(x)))

where t(x) is the teacher's p(tumour) for the stored, unaugmented x (Hinton et al. 2015 at
temperature 1). The teacher (``distill.teacher``: a bundle directory, ``bundled:NAME`` or a
pcam-train workdir, as pcam-predict's ``--model``) runs once over the training split, with
``distill.tta`` averaged over the 8 D4 views, so that t is invariant to the D4 augmentation the
student's inputs receive (a p4m student is invariant to all 8 views, a p4 one to the 4
rotations, and neither could fit targets that are not). ``training_targets`` caches t in
WORKDIR/distill_targets.npz (``workdir.read/write_distill_targets``), keyed by teacher, views,
split and its size: a resumed run reads the same targets back instead of running the teacher
again. Layout: t is float32 (N,), indexed by the training source's record index, which every
batch carries; the loader adds it to each element as ``teacher``
(``pipeline.make_loader(targets=...)``), so the shuffle, the sharding and the device
augmentation are unchanged. The teacher runs before the train_minutes clock starts: a budget is
the student's training alone.
Imports: infer (the teacher), data.sources, workdir, runtime, errors.
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import logging

from pcam_jax.data import sources
from pcam_jax.errors import ModelError, TrainingError
from pcam_jax.infer.load import load_model
from pcam_jax.infer.predict import make_eval_loader, predict
from pcam_jax.runtime.distributed import make_mesh
from pcam_jax.workdir import read_distill_targets, write_distill_targets


def distill_weight(config: ml_collections.ConfigDict) -> float:
    """``distill.weight``: the teacher's share of the loss (0 for a config without the field)."""
    return float(config.get("distill", {}).get("weight", 0.0))


def distilling(config: ml_collections.ConfigDict) -> bool:
    """Whether `config` trains against a teacher (``distill.weight`` > 0)."""
    return distill_weight(config) > 0


def check_distill(config: ml_collections.ConfigDict) -> None:
    """Raises TrainingError when ``distill.weight`` > 0 names no teacher, or a path that is not
    there (before anything is written)."""
    if not distilling(config):
        return
    teacher = str(config.distill.teacher)
    if not teacher:
        raise TrainingError(
            f"config.distill.weight={config.distill.weight} needs config.distill.teacher: a "
            "model bundle, bundled:NAME or a pcam-train workdir (or set the weight to 0)"
        )
    if not teacher.startswith("bundled") and not Path(teacher).exists():
        raise TrainingError(
            f"config.distill.teacher={teacher}: no such file or directory; give a model "
            "bundle, bundled:NAME or a pcam-train workdir"
        )


def training_targets(config: ml_collections.ConfigDict, workdir: Path) -> np.ndarray | None:
    """The teacher's p(tumour), float32 (N,), for the N patches of the training split in record
    order (read from WORKDIR's cache, or computed and cached); None when not distilling."""
    if not distilling(config):
        return None
    source = sources.from_config(config, config.data.train_split)
    tta = bool(config.distill.tta)
    key = {
        "teacher": str(config.distill.teacher),
        "views": 8 if tta else 1,
        "split": f"{source.name}/{source.split}",
        "patches": len(source),
    }
    cached = read_distill_targets(workdir, key)
    if cached is not None:
        return cached
    try:
        teacher = load_model(config.distill.teacher)
    except ModelError as e:
        raise TrainingError(f"config.distill.teacher: {e}") from None
    t0 = time.perf_counter()
    mesh = make_mesh()
    out = predict(
        teacher.predict_fn(mesh, tta), teacher.variables, make_eval_loader(config, source), mesh
    )
    if not np.array_equal(out["index"], np.arange(len(source))):
        raise TrainingError(f"{key['split']}: the teacher's predictions do not cover the split")
    p = out["p_tumour"].astype(np.float32)
    logging.info(
        "distillation targets: %s over %d patches (%d views) in %.0f s",
        key["teacher"],
        len(p),
        key["views"],
        time.perf_counter() - t0,
    )
    write_distill_targets(workdir, p, key)
    return p
