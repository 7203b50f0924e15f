"""densenet: Veeling et al.'s PCam DenseNet (Adam 1e-3, batch 64, ~100 epochs, flips + rot90).

    pcam-train --config=configs/densenet.py --workdir=runs/densenet

The same recipe builds the group versions: ``configs/p4densenet.py`` and
``configs/p4mdensenet.py`` (the PCam authors' P4M-DenseNet), each with its growth rate
(``pcam_jax.models.densenet.DEFAULT_GROWTH``: about equal parameters across the three).
"""

import ml_collections

from pcam_jax.config import base_config, epochs_to_steps
from pcam_jax.models.densenet import DEFAULT_GROWTH


def get_config(model: str = "densenet") -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = model  # densenet | p4densenet | p4mdensenet
    c.model.growth_rate = DEFAULT_GROWTH[model.removesuffix("densenet") or "z2"]
    c.model.depth = 4
    c.model.num_blocks = 5
    c.model.compression = 0.5
    c.num_train_steps = epochs_to_steps(100, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.schedule.name = "constant"
    return c
