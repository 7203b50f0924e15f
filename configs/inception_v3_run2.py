"""inception_v3_run2: the study's Inception v3 transfer run 2 (see pcam_jax.config_base)."""

import ml_collections

from pcam_jax.config_base import inception_config


def get_config() -> ml_collections.ConfigDict:
    return inception_config(2)
