"""p4cnn: the study's 6-layer CNN on PCam (see pcam_jax.config_base.cnn_config)."""

import ml_collections

from pcam_jax.config_base import cnn_config


def get_config() -> ml_collections.ConfigDict:
    return cnn_config("p4cnn")
