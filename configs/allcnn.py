"""allcnn: All-CNN-C on PCam (RMSprop with a triangular cyclic learning rate, 24 epochs).

    pcam-train --config=configs/allcnn.py --workdir=runs/allcnn

The same recipe builds the group versions: ``configs/p4allcnn.py`` and ``configs/p4mallcnn.py``.
"""

import ml_collections

from pcam_jax.config import base_config, epochs_to_steps


def get_config(model: str = "allcnn") -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = model  # allcnn | p4allcnn | p4mallcnn
    c.model.width_multiplier = 1.0
    c.model.dropout_rate = 0.5
    c.num_train_steps = epochs_to_steps(24, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 1e-3  # the top of the cycle
    c.optimizer.momentum = 0.0
    c.schedule.name = "cyclic"
    c.schedule.min_fraction = 0.1
    c.schedule.cycle_steps = epochs_to_steps(4, c.batch_size)
    return c
