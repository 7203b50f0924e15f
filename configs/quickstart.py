"""quickstart: a small p4m CNN on the synthetic PCam, about a minute on a 2-core CPU.

    pcam-data synth --out=data/synthetic
    pcam-train --config=configs/quickstart.py --workdir=runs/quickstart

(`python -m pcam_jax.cli.quickstart` does all of it, then evaluates on the test split.)
"""

import ml_collections

from pcam_jax.config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = "p4mcnn"
    c.model.width_multiplier = 0.5
    c.model.convs_per_stage = 1
    c.model.dense_features = 32
    c.model.dropout_rate = 0.0  # a few-channel model learns nothing in 60 steps with dropout
    c.model.dense_dropout_rate = 0.0
    c.data.root = "data/synthetic"
    c.data.worker_count = 0
    c.batch_size = 32
    c.num_train_steps = 60
    c.log_every_steps = 10
    c.eval_every_steps = 30
    c.checkpoint_every_steps = 30
    c.optimizer.learning_rate = 3e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 5
    return c
