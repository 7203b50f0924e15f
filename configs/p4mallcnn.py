"""p4mallcnn: All-CNN-C as a p4m G-CNN, with the recipe of configs/allcnn.py."""

import ml_collections

from pcam_jax.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    return sibling_config(__file__, "allcnn.py", "p4mallcnn")
