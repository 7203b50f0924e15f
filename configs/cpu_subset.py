"""cpu_subset: a CPU-sized p4m CNN on the real PCam subset (../shared/data/pcam-subset).

    pcam-train --config=configs/cpu_subset.py --workdir=runs/cpu_subset
    pcam-eval --workdir=runs/cpu_subset --split=valid

The subset has train and valid splits only (folder layout, JPEG).
"""

import ml_collections

from pcam_jax.config_base import cpu_subset_config


def get_config() -> ml_collections.ConfigDict:
    return cpu_subset_config()
