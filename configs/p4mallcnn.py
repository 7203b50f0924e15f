"""p4mallcnn: All-CNN-C on PCam (see pcam_jax.config_base.allcnn_config)."""

import ml_collections

from pcam_jax.config_base import allcnn_config


def get_config() -> ml_collections.ConfigDict:
    return allcnn_config("p4mallcnn")
