"""transfer_finetune_d4: both priors at once: the ImageNet-pretrained EfficientNet-Lite0 of
configs/transfer_finetune.py made exactly invariant to a symmetry group of the patch by running
every view through the network and averaging the pooled features before the head.

    pcam-train --config=configs/transfer_finetune_d4.py --workdir=runs/transfer_ft_p4m
    pcam-train --config=configs/transfer_finetune_d4.py:p4 --workdir=runs/transfer_ft_p4

The argument is the group: p4m (the 8 rotations and mirrors of D4, 8x the cost per patch) or p4
(the 4 quarter turns, 4x). Everything else is configs/transfer_finetune.py's recipe. Measured in
BENCHMARKS.md ("Transfer learning").
"""

import ml_collections

from pcam_jax.config import sibling_config


def get_config(group: str = "p4m") -> ml_collections.ConfigDict:
    if group not in ("p4", "p4m"):
        raise ValueError(f"transfer_finetune_d4: group {group!r}; expected p4 or p4m")
    c = sibling_config(__file__, "transfer_finetune.py")
    c.model.name = f"{group}_efficientnet_lite0"
    return c
