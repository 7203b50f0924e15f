"""The fields every training config has, with their defaults.

Each file in configs/ calls `base_config()` and sets what differs. Every field
can be overridden on the command line as `--config.a.b=value`; a field that
is not here (or not added by the config file) is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ml_collections

from pcam_jax.data.pipeline import AugmentConfig
from pcam_jax.errors import ModelError

# Fields that do not change the trained parameters: a restarted run may change them.
RUN_NEUTRAL_FIELDS: frozenset[str] = frozenset(
    {
        "data.root",
        "data.read_threads",
        "data.read_buffer",
        "data.worker_buffer_size",
        "data.worker_count",  # global batches do not depend on it (GlobalBatchSampler)
        "data.eval_split",
        "eval_batch_size",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "profile_steps",
        "num_train_steps",
    }
)


def load_config_file(path: str | Path, *overrides: str) -> ml_collections.ConfigDict:
    """A config file's get_config() with `--config.a.b=value` overrides, parsed exactly as
    pcam-train parses them (ml_collections config_flags; an unknown field is an error)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--config={path}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
    )
    fv(argv)
    return fv.config


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every config (a p4m CNN on the PCam HDF5 files)."""
    c = ml_collections.ConfigDict()
    # model.name is a pcam_jax.models.create name; every other model.* field is
    # passed to create() as an override.
    c.model = ml_collections.ConfigDict({"name": "p4mcnn"})

    c.data = ml_collections.ConfigDict()
    c.data.source = "pcam_hdf5"  # pcam_hdf5 | folder | kaggle
    c.data.root = "data/pcam"
    c.data.train_split = "train"
    c.data.eval_split = "valid"  # split of the periodic validation
    c.data.normalization = "dataset"  # dataset (training-split statistics) | imagenet
    c.data.worker_count = 2
    c.data.worker_buffer_size = 2
    c.data.read_threads = 2
    c.data.read_buffer = 64
    c.data.kaggle_valid_fraction = 0.1
    c.data.kaggle_split_seed = 0

    c.augment = ml_collections.ConfigDict(AugmentConfig().__dict__)
    c.augment.d4 = True

    c.batch_size = 64  # global, split over all devices
    c.eval_batch_size = 256
    c.num_train_steps = 1000
    # > 0: a wall-clock budget. A fresh run measures its speed (a short probe on a throwaway
    # copy of the state) and sets the number of steps, and so the schedule, so that training,
    # its validations and checkpoints end within this many minutes of the start; the choice is
    # stored in WORKDIR/train_plan.json and a resumed run keeps it. num_train_steps is then
    # ignored.
    c.train_minutes = 0.0
    c.seed = 0
    c.compute_dtype = "float32"  # float32 | bfloat16
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3  # the last K are kept, and the best by validation AUC
    c.init_from = ""  # inception_v3: torchvision ImageNet state_dict (.pth) to start from
    c.aux_loss_weight = 0.0  # inception_v3: weight of the auxiliary head's loss
    c.profile_steps = 0  # > 0: capture a profiler trace of that many steps
    # > 0: keep an exponential moving average of the parameters and BatchNorm statistics with
    # this decay (warmed up as min(decay, (1 + t) / (10 + t)) at update t); it is checkpointed,
    # evaluated during training and used by pcam-eval unless --weights=raw
    c.ema_decay = 0.0
    c.label_smoothing = 0.0  # targets (1 - s) one-hot + s / 2

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"  # adam | adamw | sgd | rmsprop
    c.optimizer.learning_rate = 1e-3  # peak learning rate of the schedule
    c.optimizer.b1 = 0.9  # adam/adamw
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8  # adam/adamw/rmsprop
    c.optimizer.momentum = 0.9  # sgd/rmsprop
    c.optimizer.nesterov = False  # sgd
    c.optimizer.decay = 0.9  # rmsprop squared-gradient decay
    # decoupled for adamw (kernels only: no decay of biases, BN scales and offsets), L2 added to
    # the gradient otherwise
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 0.0  # > 0: clip the global gradient norm

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"  # constant | step | cosine | one_cycle | cyclic
    c.schedule.warmup_steps = 0  # cosine: linear warm-up from 0
    c.schedule.decay_factor = 0.16  # step: multiply by this ...
    c.schedule.decay_every_steps = 1000  # ... every this many steps
    c.schedule.final_fraction = 0.0  # cosine: final lr as a fraction of the peak
    c.schedule.min_fraction = 0.1  # cyclic/one_cycle: lowest lr as a fraction of the peak
    c.schedule.cycle_steps = 2000  # cyclic: steps of one triangle (up and down)
    return c


PCAM_TRAIN_PATCHES = 262_144


def epochs_to_steps(epochs: float, batch_size: int) -> int:
    """Optimizer steps of `epochs` passes over the full PCam training split."""
    return int(round(epochs * PCAM_TRAIN_PATCHES / batch_size))


def cnn_config(model_name: str) -> ml_collections.ConfigDict:
    """The study's 6-layer CNN (cnn | p4cnn | p4mcnn): Adam 1e-3, batch 64, D4 augmentation."""
    c = base_config()
    c.model.name = model_name
    c.model.width_multiplier = 1.0
    c.model.dense_features = 256
    c.model.dropout_rate = 0.25
    c.model.dense_dropout_rate = 0.5
    c.num_train_steps = epochs_to_steps(24, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 1000
    return c


def allcnn_config(model_name: str) -> ml_collections.ConfigDict:
    """All-CNN-C (allcnn | p4allcnn | p4mallcnn): RMSprop with a triangular cyclic rate."""
    c = base_config()
    c.model.name = model_name
    c.model.width_multiplier = 1.0
    c.model.dropout_rate = 0.5
    c.num_train_steps = epochs_to_steps(24, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 1e-3  # the top of the cycle
    c.optimizer.momentum = 0.0
    c.schedule.name = "cyclic"
    c.schedule.min_fraction = 0.1
    c.schedule.cycle_steps = epochs_to_steps(4, c.batch_size)
    return c


def densenet_config(model_name: str) -> ml_collections.ConfigDict:
    """Veeling et al.'s PCam DenseNet: Adam 1e-3, batch 64, ~100 epochs, flips + rot90."""
    from pcam_jax.models.densenet import DEFAULT_GROWTH

    c = base_config()
    c.model.name = model_name
    c.model.growth_rate = DEFAULT_GROWTH[model_name.removesuffix("densenet") or "z2"]
    c.model.depth = 4
    c.model.num_blocks = 5
    c.model.compression = 0.5
    c.num_train_steps = epochs_to_steps(100, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.schedule.name = "constant"
    return c


def inception_config(run: int) -> ml_collections.ConfigDict:
    """The study's Inception v3 transfer runs: ImageNet backbone frozen, new main and aux heads.

    run 1: RMSprop lr 0.1, momentum 0.9, eps 1.0, step decay x0.16 every 4 epochs, no
    augmentation. run 2: SGD with Nesterov momentum and augmentation.
    Set --config.init_from=PATH/inception_v3_google-*.pth (torchvision's ImageNet weights).
    """
    c = base_config()
    c.model.name = "inception_v3"
    c.model.freeze_backbone = True
    c.aux_loss_weight = 0.4
    c.data.normalization = "imagenet"
    c.eval_batch_size = 64
    c.num_train_steps = epochs_to_steps(24, c.batch_size)
    c.eval_every_steps = c.checkpoint_every_steps = epochs_to_steps(1, c.batch_size)
    if run == 1:
        c.augment.d4 = False
        c.optimizer.name = "rmsprop"
        c.optimizer.learning_rate = 0.1
        c.optimizer.momentum = 0.9
        c.optimizer.eps = 1.0
        c.schedule.name = "step"
        c.schedule.decay_factor = 0.16
        c.schedule.decay_every_steps = epochs_to_steps(4, c.batch_size)
    elif run == 2:
        c.augment.d4 = True
        c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.1
        c.optimizer.name = "sgd"
        c.optimizer.learning_rate = 0.01
        c.optimizer.momentum = 0.9
        c.optimizer.nesterov = True
        c.schedule.name = "cosine"
        c.schedule.warmup_steps = 500
    else:
        raise ValueError(f"inception run {run}: expected 1 or 2")
    return c


def quickstart_config() -> ml_collections.ConfigDict:
    """A small p4m CNN on the synthetic PCam (`pcam-data synth`), about a minute on 2 cores."""
    c = base_config()
    c.model.name = "p4mcnn"
    c.model.width_multiplier = 0.5
    c.model.convs_per_stage = 1
    c.model.dense_features = 32
    c.model.dropout_rate = 0.0  # a few-channel model learns nothing in 60 steps with dropout
    c.model.dense_dropout_rate = 0.0
    c.data.root = "data/synthetic"
    c.data.worker_count = 0
    c.batch_size = 32
    c.num_train_steps = 60
    c.log_every_steps = 10
    c.eval_every_steps = 30
    c.checkpoint_every_steps = 30
    c.optimizer.learning_rate = 3e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 5
    return c


# Widths (features per group copy) of the cpu_subset models, chosen by measured validation AUC
# per minute (BENCHMARKS.md, bench/learning_curve.py): the p4 model with the plain model's total
# channels (4 x 4 ... 32 x 4 = 16 ... 128) ran as fast as the plain one and scored best.
CPU_SUBSET_WIDTHS: dict[str, tuple[int, ...]] = {
    "resnet": (16, 32, 64, 128),
    "p4resnet": (4, 8, 16, 32),
    "p4mresnet": (4, 8, 16, 32),
}


def cpu_subset_config(model_name: str = "p4resnet") -> ml_collections.ConfigDict:
    """The recipe for the real 23,000-patch PCam subset (folder source) on a 2-core CPU.

    A compute-efficient residual G-CNN (pcam_jax.models.resnet) trained for a wall-clock budget
    (train_minutes: the trainer sizes the schedule to the machine's measured speed) with AdamW
    (decoupled weight decay on kernels), a warm-up + cosine schedule, label smoothing, an EMA of
    the weights (what validation and pcam-eval use) and augmentation chosen to generalise
    across slides: D4 (exact for the group models' invariance; for the plain model the
    augmentation that teaches it), HED stain jitter (Tellez et al. 2018) and colour jitter.
    ``model_name`` picks resnet | p4resnet | p4mresnet with the same recipe and the widths of
    CPU_SUBSET_WIDTHS (``configs/cpu_subset.py:resnet`` on the command line).
    """
    if model_name not in CPU_SUBSET_WIDTHS:
        raise ValueError(
            f"cpu_subset: model {model_name!r}; expected one of {sorted(CPU_SUBSET_WIDTHS)}"
        )
    c = base_config()
    widths = CPU_SUBSET_WIDTHS[model_name]
    c.model = ml_collections.ConfigDict(
        {
            "name": model_name,
            "widths": widths,
            "blocks": (1, 1, 1, 1),
            "dropout_rate": 0.0,
            "input_crop": 0,
            "head_pool": "mean",
        }
    )
    c.data.source = "folder"
    c.data.root = "../shared/data/pcam-subset"
    c.data.worker_count = 1
    c.augment.d4 = True
    c.augment.brightness = c.augment.contrast = c.augment.saturation = 0.1
    c.augment.hue = 0.02
    c.augment.hed_sigma = 0.05
    c.augment.hed_bias = 0.02
    c.batch_size = 64
    c.eval_batch_size = 250
    c.train_minutes = 28.0  # + process start-up and the last checkpoint: <= 30 min wall
    c.num_train_steps = 4000  # the probe's provisional schedule; train_minutes sets the real one
    c.log_every_steps = 50
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 500
    c.optimizer.name = "adamw"
    # peak 4e-3: +0.008 over 2e-3 at 5,000 steps (H100 screen), and 0.9427 / 0.9443 / 0.9425
    # (seeds 0-2) in 28 CPU minutes against 0.9414 / 0.9349 at 2e-3 (BENCHMARKS.md); 6e-3: 0.9400
    c.optimizer.learning_rate = 4e-3
    c.optimizer.weight_decay = 0.05
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 100
    c.label_smoothing = 0.1
    c.ema_decay = 0.999
    return c


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """{'a.b': value} for every leaf field."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, ml_collections.ConfigDict | dict):
                walk(value, name + ".")
            else:
                out[name] = list(value) if isinstance(value, tuple) else value

    walk(config, "")
    return out


def config_from_json(path: Path) -> ml_collections.ConfigDict:
    """Rebuilds a ConfigDict from WORKDIR/config.json."""
    if not path.is_file():
        raise ModelError(f"{path}: not found; is {path.parent} a pcam-train --workdir?")
    nested: dict[str, Any] = {}
    for key, value in json.loads(path.read_text()).items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)
