"""p4densenet: Veeling et al.'s PCam DenseNet (see pcam_jax.config_base.densenet_config)."""

import ml_collections

from pcam_jax.config_base import densenet_config


def get_config() -> ml_collections.ConfigDict:
    return densenet_config("p4densenet")
