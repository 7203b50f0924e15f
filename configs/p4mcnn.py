"""p4mcnn: the study's 6-layer CNN as a p4m G-CNN, with the recipe of configs/cnn.py."""

import ml_collections

from pcam_jax.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    return sibling_config(__file__, "cnn.py", "p4mcnn")
