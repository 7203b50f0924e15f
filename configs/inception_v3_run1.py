"""inception_v3_run1: the study's Inception v3 transfer run 1.

ImageNet backbone frozen, new main and auxiliary heads; RMSprop lr 0.1, momentum 0.9, eps 1.0,
step decay x0.16 every 4 epochs, no augmentation. Needs torchvision's ImageNet weights:

    pcam-train --config=configs/inception_v3_run1.py --workdir=runs/inception1 \
        --config.init_from=PATH/inception_v3_google-0cc3c7bd.pth
"""

import ml_collections

from pcam_jax.config import base_config, epochs_to_steps


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = "inception_v3"
    c.model.freeze_backbone = True
    c.aux_loss_weight = 0.4
    c.data.normalization = "imagenet"
    c.eval_batch_size = 64
    c.num_train_steps = epochs_to_steps(24, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.augment.d4 = False
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.eps = 1.0
    c.schedule.name = "step"
    c.schedule.decay_factor = 0.16
    c.schedule.decay_every_steps = epochs_to_steps(4, c.batch_size)
    return c
