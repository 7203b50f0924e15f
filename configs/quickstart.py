"""quickstart: a small p4m CNN on the synthetic PCam, about a minute on a 2-core CPU.

pcam-data synth --out=data/synthetic
pcam-train --config=configs/quickstart.py --workdir=runs/quickstart
"""

import ml_collections

from pcam_jax.config_base import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = "p4mcnn"
    c.model.width_multiplier = 0.5
    c.model.dense_features = 64
    c.data.root = "data/synthetic"
    c.data.worker_count = 0
    c.batch_size = 32
    c.num_train_steps = 200
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.optimizer.learning_rate = 2e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    return c
