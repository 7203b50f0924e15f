"""cpu_subset: the recipe for the real PCam subset (../shared/data/pcam-subset) on a 2-core CPU:
a compute-efficient residual network trained for a 28-minute wall-clock budget.

    pcam-train --config=configs/cpu_subset.py --workdir=runs/cpu_subset              # p4resnet
    pcam-train --config=configs/cpu_subset.py:resnet --workdir=runs/cpu_subset_resnet
    pcam-train --config=configs/cpu_subset.py:p4mresnet --workdir=runs/cpu_subset_p4mresnet
    pcam-eval --workdir=runs/cpu_subset --split=valid

The argument picks the model (resnet | p4resnet | p4mresnet); the widths give the three the same
total channels (16 ... 128), so about the same FLOPs per image (the group models have fewer
parameters). ``:p4resnet_valid`` (and ``:resnet_valid``, ``:p4mresnet_valid``) is the ResNet
without padding, whose dense slide inference equals its window-by-window inference
(pcam_jax.models.valid_resnet; ``pcam-slide`` runs it densely). The study's systems train under the
same recipe, CPU-sized (STUDY_WIDTH_MULTIPLIER): ``:cnn``, ``:p4cnn``, ``:p4mcnn`` (the 6-layer
CNN at a quarter of its widths) and ``:allcnn``, ``:p4allcnn``, ``:p4mallcnn`` (All-CNN-C at an
eighth), so the plain member of each family costs about what the plain ResNet costs; the group
members keep the study's equal-parameter widths (divided by sqrt(|G|)), so they cost about 4x
(p4) and 8x (p4m) their plain sibling (BENCHMARKS.md, "The study's systems under one recipe").
How the models compare under this recipe is measured in BENCHMARKS.md ("Accuracy per minute",
"Data efficiency"): the plain ResNet leads on valid with all the training patches, the two tie
on patches from other slides, and the p4 model leads only with the fewest labels. The default is
the p4 model for its tie on other slides, its exact invariance to quarter turns and its quarter
of the parameters; the bundled model is one. The recipe: AdamW (decoupled weight decay on
kernels), warm-up + cosine sized by train_minutes to the machine's measured speed, label
smoothing, an EMA of the weights (what validation and pcam-eval use), and augmentation chosen to
generalise across slides: D4 (exact for the group models' invariance; for the plain model the
augmentation that teaches it), HED stain jitter (Tellez et al. 2018) and colour jitter. The
subset has train and valid splits only (folder layout, JPEG).
"""

import ml_collections

from pcam_jax.config import base_config

# Features per group copy: the p4/p4m models' 4 ... 32 copies of 4 (or 8) group elements match
# the plain model's 16 ... 128 channels.
WIDTHS: dict[str, tuple[int, ...]] = {
    "resnet": (16, 32, 64, 128),
    "p4resnet": (4, 8, 16, 32),
    "p4mresnet": (4, 8, 16, 32),
    # valid convolutions, exact under dense slide inference (pcam_jax.models.valid_resnet): the
    # same first three stages; the last, 1x1 convs on a 2x2 map, four times as wide
    "resnet_valid": (16, 32, 64, 512),
    "p4resnet_valid": (4, 8, 16, 128),
    "p4mresnet_valid": (4, 8, 16, 128),
}


# The study's systems (configs/cnn.py, configs/allcnn.py) at a fraction of their widths.
STUDY_WIDTH_MULTIPLIER: dict[str, float] = {
    **dict.fromkeys(("cnn", "p4cnn", "p4mcnn"), 0.25),
    **dict.fromkeys(("allcnn", "p4allcnn", "p4mallcnn"), 0.125),
}


def get_config(model: str = "p4resnet") -> ml_collections.ConfigDict:
    if model not in WIDTHS and model not in STUDY_WIDTH_MULTIPLIER:
        raise ValueError(
            f"cpu_subset: model {model!r}; expected one of "
            f"{sorted(WIDTHS) + sorted(STUDY_WIDTH_MULTIPLIER)}"
        )
    c = base_config()
    if model.endswith("_valid"):
        c.model = ml_collections.ConfigDict(
            {"name": model, "widths": WIDTHS[model], "dropout_rate": 0.0}
        )
    elif model in WIDTHS:
        c.model = ml_collections.ConfigDict(
            {
                "name": model,
                "widths": WIDTHS[model],
                "blocks": (1, 1, 1, 1),
                "dropout_rate": 0.0,
                "input_crop": 0,
                "head_pool": "mean",
            }
        )
    else:  # the study's own dropout and heads (pcam_jax.models defaults)
        c.model = ml_collections.ConfigDict(
            {"name": model, "width_multiplier": STUDY_WIDTH_MULTIPLIER[model]}
        )
    c.data.source = "folder"
    c.data.root = "../shared/data/pcam-subset"
    c.data.worker_count = 1
    c.augment.d4 = True
    c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.1
    c.augment.hue = 0.02
    c.augment.hed_sigma = 0.05
    c.augment.hed_bias = 0.02
    # on the device (inside the jit-compiled step): the loader then only reads and decodes, several
    # times faster, and the step keeps its speed (BENCHMARKS.md "Augmentation on the device")
    c.augment.where = "device"
    c.batch_size = 64
    c.eval_batch_size = 250
    c.train_minutes = 28.0  # + process start-up and the last checkpoint: <= 30 min wall
    c.num_train_steps = 4000  # the probe's provisional schedule; train_minutes sets the real one
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 500
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 4e-3  # the peak; the screen of peaks is in BENCHMARKS.md
    c.optimizer.weight_decay = 0.05
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 100
    c.label_smoothing = 0.1
    c.ema_decay = 0.999
    return c
