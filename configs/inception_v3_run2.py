"""inception_v3_run2: the study's Inception v3 transfer run 2.

The frozen ImageNet backbone and new heads of configs/inception_v3_run1.py, trained with SGD +
Nesterov momentum (lr 0.01, warm-up and cosine) and augmentation (D4 and colour jitter):

    pcam-train --config=configs/inception_v3_run2.py --workdir=runs/inception2 \
        --config.init_from=PATH/inception_v3_google-0cc3c7bd.pth
"""

import ml_collections

from pcam_jax.config import sibling_config


def get_config() -> ml_collections.ConfigDict:
    c = sibling_config(__file__, "inception_v3_run1.py")  # the model and data of run 1
    c.augment.d4 = True
    c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.1
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.01
    c.optimizer.momentum = 0.9
    c.optimizer.eps = 1e-8  # the base default (run 1 sets 1.0 for RMSprop)
    c.optimizer.nesterov = True
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 500
    c.schedule.decay_every_steps = 1000  # the base default (run 1's step decay is unused)
    return c
