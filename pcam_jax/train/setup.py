"""Setting up a run: the checks of a config, the data, the initial state, the sharding.

``check_recipe`` refuses values no run can use before anything is built or written;
``resolve_augment_where`` fixes where ``augment.where=auto`` augments on this machine, so that
config.json records it. ``make_train_loader`` is the training input pipeline
(``pcam_jax.data.pipeline``): this process's share of every global batch, seeded shuffle and,
unless the train step augments on the device (``data.device_augment``), augmentation.
``create_state`` builds the TrainState from ``model.init`` (and ImageNet weights for a transfer
model, ``models.pretrained``), with its optimizer (``train.optim``) and EMA. ``replicate`` puts
the state on every device of the mesh; ``global_batch`` assembles each process's share into the
step's global arrays.
Imports: models, config, data, train.optim/step, runtime, errors.
"""

from __future__ import annotations

import copy
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax import models
from pcam_jax.config import check_values
from pcam_jax.data import device_augment, pipeline, sources
from pcam_jax.errors import TrainingError
from pcam_jax.runtime.distributed import is_primary, to_global
from pcam_jax.train.distill import check_distill
from pcam_jax.train.optim import make_optimizer
from pcam_jax.train.step import TrainState


def check_recipe(config: ml_collections.ConfigDict) -> None:
    """Raises TrainingError naming the first field no run can use: out of its range
    (``config.check_values``), a distillation weight without a teacher that exists
    (``distill.check_distill``) or, for this machine, a batch that does not split over its
    devices, or a continuous rotation asked of the device augmentation."""
    check_values(config)
    check_distill(config)
    if config.batch_size % jax.device_count():
        raise TrainingError(
            f"config.batch_size={config.batch_size} must be a multiple of the "
            f"{jax.device_count()} devices"
        )
    aug = config.augment
    if aug.get("where") == "device" and aug.rotate_degrees:
        raise TrainingError(
            f"config.augment.rotate_degrees={aug.rotate_degrees}: continuous rotation runs on "
            "the host only, and config.augment.where=device; set --config.augment.where=host "
            "(or auto) or --config.augment.rotate_degrees=0"
        )


def resolve_augment_where(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose ``augment.where`` is ``host`` or ``device`` as ``auto`` resolves
    on this platform (``device_augment.resolve_where``): the run stores the choice, and a
    resume on a machine where ``auto`` picks the other path is refused rather than changed."""
    if config.augment.get("where", "host") != "auto":
        return config
    resolved = copy.deepcopy(config)
    resolved.augment.where = device_augment.resolve_where(
        "auto", jax.default_backend(), config.augment.rotate_degrees
    )
    return resolved


def make_train_loader(
    config: ml_collections.ConfigDict,
    source: sources.PatchSource,
    targets: np.ndarray | None = None,
) -> grain.DataLoader:
    """This process's training loader: its share of every global batch, augmented on the host
    unless ``augment.where`` resolves to ``device`` (the train step's then), and with the
    distillation `targets` (``train.distill``) as each element's ``teacher``."""
    host_augment, _ = device_augment.split_augment(config.augment.to_dict(), jax.default_backend())
    return pipeline.make_loader(
        source,
        batch_size=config.batch_size // jax.process_count(),
        train=True,
        seed=config.seed,
        augment=host_augment,
        worker_count=config.data.worker_count,
        worker_buffer_size=config.data.worker_buffer_size,
        read_threads=config.data.read_threads,
        read_buffer=config.data.read_buffer,
        shard_options=pipeline.process_shard_options(),
        targets=targets,
    )


def initial_variables(
    config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array
) -> dict[str, Any]:
    """model.init (`models.init_variables`), then config.init_from's pretrained weights."""
    size = models.input_size(config.model.name)
    variables = models.init_variables(model, key, (2, size, size, 3))
    if config.init_from:
        from pcam_jax.models import pretrained

        try:
            variables = pretrained.load_into(config.model.name, variables, config.init_from)
        except (FileNotFoundError, ValueError) as e:
            raise TrainingError(f"config.init_from: {e}") from None
    return dict(variables)


def create_state(
    config: ml_collections.ConfigDict, model: nn.Module, schedule: optax.Schedule
) -> TrainState:
    """The initial TrainState: ``initial_variables`` (seed ``config.seed``), the optimizer of
    `schedule` (heads only for a frozen backbone) and, with ``ema_decay > 0``, the EMA."""
    variables = initial_variables(config, model, jax.random.key(config.seed))
    params = variables["params"]
    tx = make_optimizer(
        config.optimizer,
        schedule,
        models.trainable_mask(model, params),
        models.head_mask(model, params),
    )
    batch_stats = variables.get("batch_stats", {})
    ema = None
    if config.ema_decay > 0:
        ema = jax.tree_util.tree_map(
            jnp.copy, {"params": variables["params"], "batch_stats": batch_stats}
        )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=batch_stats,
        ema=ema,
        tx=tx,
    )


def with_schedule(
    config: ml_collections.ConfigDict, model: nn.Module, state: TrainState, schedule: optax.Schedule
) -> TrainState:
    """`state` with the optimizer of another schedule (same optimizer state structure)."""
    masks = models.trainable_mask(model, state.params), models.head_mask(model, state.params)
    return state.replace(tx=make_optimizer(config.optimizer, schedule, *masks))


def norm_stats(config: ml_collections.ConfigDict, train_source: Any) -> pipeline.NormStats:
    """Training-split statistics, or ImageNet's (config.data.normalization)."""
    if config.data.normalization == "imagenet":
        return pipeline.IMAGENET_STATS
    if config.data.normalization != "dataset":
        raise TrainingError(
            f"config.data.normalization={config.data.normalization!r}: expected dataset or imagenet"
        )
    if jax.process_count() > 1:
        # process 0 streams the split and caches the result beside the data; the others
        # then read that cache (or, when they cannot see it, compute the same numbers)
        if is_primary():
            pipeline.dataset_norm_stats(train_source)
        multihost_utils.sync_global_devices("pcam_jax norm stats")
    return pipeline.dataset_norm_stats(train_source)


def global_batch(mesh: jax.sharding.Mesh, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A training batch (this process's share) as the step's global image and label arrays (and
    ``teacher``, the distillation targets, when the loader adds them)."""
    keys = ("image", "label", "teacher") if "teacher" in batch else ("image", "label")
    return {k: to_global(mesh, batch[k]) for k in keys}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every array of `tree` (the same on every process) replicated over `mesh`."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)
