"""cpu_subset: the best recipe found for the real PCam subset (../shared/data/pcam-subset) on a
2-core CPU, a residual p4 G-CNN trained for a 28-minute wall-clock budget.

    pcam-train --config=configs/cpu_subset.py --workdir=runs/cpu_subset
    pcam-eval --workdir=runs/cpu_subset --split=valid

The same recipe for the plain and p4m models (widths: config_base.CPU_SUBSET_WIDTHS):

    pcam-train --config=configs/cpu_subset.py:resnet --workdir=runs/cpu_subset_resnet
    pcam-train --config=configs/cpu_subset.py:p4mresnet --workdir=runs/cpu_subset_p4mresnet

The subset has train and valid splits only (folder layout, JPEG).
"""

import ml_collections

from pcam_jax.config_base import cpu_subset_config


def get_config(model: str = "p4resnet") -> ml_collections.ConfigDict:
    return cpu_subset_config(model or "p4resnet")
