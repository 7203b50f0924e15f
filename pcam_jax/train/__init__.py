"""Training: ``train_and_evaluate(config, workdir)`` and its parts.

Owns: the loop (``loop``), the pure train step and its state (``step``), the set-up of a run
(``setup``), checkpoint contents, saving and resuming (``checkpointing``), the periodic
validation (``evaluator``), the ``train_minutes`` planner and the loop's clock (``budget``), the
optimizers and learning-rate schedules (``optim``), and a teacher's targets for knowledge
distillation (``distill``). It may import everything below it
(models, data, config, workdir, infer, runtime); nothing but pcam-train (``cli/train.py``), the
quickstart and tests imports it.
"""

from pcam_jax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
