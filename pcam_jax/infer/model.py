"""A model as training and inference build it: the flax module of a config, its device-side
input transform, and the small conventions both sides share.

``create_model(config)`` builds ``config.model.name`` (``pcam_jax.models``) with the other
``model.*`` fields, its BatchNorm statistics averaged over the ``data`` mesh axis.
``Preprocess`` is what every compiled step applies first to the uint8 patches (B, 96, 96, 3):
normalise with the training split's statistics, resize for Inception (299), cast to the compute
dtype. ``cast_floats`` casts float parameters to that dtype (the float32 masters stay);
``split_outputs`` separates Inception's auxiliary logits. PCam's patches are 96x96 at
PCAM_MPP um/px. Imports: models, data.pipeline, runtime, errors; nothing of training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from pcam_jax import models
from pcam_jax.data import pipeline
from pcam_jax.errors import ModelError
from pcam_jax.runtime.distributed import AXIS

#: Microns per pixel of PCam's patches: level 2 of CAMELYON16's 40x scans (0.243 um/px x 4).
PCAM_MPP = 0.972


@struct.dataclass
class Preprocess:
    """Device-side input transform: normalise, resize (Inception), cast."""

    mean: tuple[float, ...] = struct.field(pytree_node=False)
    std: tuple[float, ...] = struct.field(pytree_node=False)
    size: int = struct.field(pytree_node=False, default=96)
    dtype: Any = struct.field(pytree_node=False, default=jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = pipeline.normalize(images, self.mean, self.std)
        if self.size != x.shape[1]:
            x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[3]), "bilinear")
        return x.astype(self.dtype)


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The model named by config.model.name with the other model.* fields as overrides."""
    overrides = {k: v for k, v in config.model.items() if k != "name"}
    try:
        model = models.create(config.model.name, **overrides)
    except (ValueError, TypeError) as e:
        raise ModelError(f"config.model: {e}") from e
    if "axis_name" in {f.name for f in dataclasses.fields(model)} and "axis_name" not in overrides:
        model = model.clone(axis_name=AXIS)  # BatchNorm statistics over the whole global batch
    return model


def make_preprocess(config: ml_collections.ConfigDict, norm: pipeline.NormStats) -> Preprocess:
    """The device-side input transform of `config` with normalisation statistics `norm`."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.compute_dtype not in dtypes:
        raise ModelError(
            f"config.compute_dtype={config.compute_dtype!r}: expected float32 or bfloat16"
        )
    size = models.input_size(config.model.name)
    return Preprocess(tuple(norm.mean), tuple(norm.std), size, dtypes[config.compute_dtype])


def split_outputs(out: Any) -> tuple[jax.Array, jax.Array | None]:
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Casts floating leaves to the compute dtype (a no-op for float32); masters stay float32."""
    if dtype == jnp.float32:
        return tree
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def count_parameters(variables: dict[str, Any]) -> int:
    """Number of trainable parameters (the ``params`` collection) of a variables tree."""
    return int(sum(np.size(v) for v in jax.tree_util.tree_leaves(variables["params"])))


def abstract_variables(model: nn.Module, size: int) -> dict[str, Any]:
    """The {"params", "batch_stats"} tree of `model` as ShapeDtypeStructs (nothing computed)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3), jnp.float32))
    )
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}
