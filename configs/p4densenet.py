"""p4densenet: the PCam DenseNet as a p4 G-CNN, with the recipe of configs/densenet.py."""

import ml_collections

from pcam_jax.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    return sibling_config(__file__, "densenet.py", "p4densenet")
