"""cnn: the study's 6-layer CNN on PCam (Adam 1e-3, batch 64, D4 augmentation, 24 epochs).

    pcam-train --config=configs/cnn.py --workdir=runs/cnn

The same recipe builds the group versions: ``configs/p4cnn.py`` and ``configs/p4mcnn.py`` (or
``--config=configs/cnn.py:p4cnn``).
"""

import ml_collections

from pcam_jax.config import base_config, epochs_to_steps


def get_config(model: str = "cnn") -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = model  # cnn | p4cnn | p4mcnn
    c.model.width_multiplier = 1.0
    c.model.dense_features = 256
    c.model.dropout_rate = 0.25
    c.model.dense_dropout_rate = 0.5
    c.num_train_steps = epochs_to_steps(24, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 1000
    return c
