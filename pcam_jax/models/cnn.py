"""The study's final network as plain (z2), p4 and p4m variants: ``cnn``, ``p4cnn``, ``p4mcnn``.

Six 3x3 'SAME' convolutions in three stages (two per stage, channels growing 32 -> 64 -> 128 for
Z2, divided by sqrt(|G|) for the group variants so that parameters match), each stage ending in
2x2/2 max pooling (exact on 96 -> 48 -> 24 -> 12) and feature-map dropout; then invariant global
pooling (max over the group, mean over space) and two dense layers with dropout in between.

Because the group variants pool over the group (and space) before the dense layers, their logits
are invariant to the 8 (p4m) or 4 (p4) transformations of the input patch. The plain model uses
the same head (``flatten_head=True`` gives the study's flatten-then-dense head instead).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.equivariant import groups
from pcam_jax.equivariant.layers import (
    GroupBatchNorm,
    GroupDropout,
    conv_layer,
    scaled_width,
    spatial_pool,
)


class GroupCNN(nn.Module):
    """6-conv CNN: (N, 96, 96, 3) -> logits (N, num_classes)."""

    group: str = "z2"
    base_widths: tuple[int, ...] = (32, 64, 128)
    convs_per_stage: int = 2
    width_multiplier: float = 1.0
    dense_features: int = 256
    num_classes: int = 2
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)
    dropout_rate: float = 0.25
    dense_dropout_rate: float = 0.5
    batch_norm: bool = True
    flatten_head: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g = self.group
        first = True
        for stage, base in enumerate(self.base_widths):
            width = scaled_width(base, g, self.width_multiplier)
            for i in range(self.convs_per_stage):
                name = f"conv{stage}_{i}"
                x = conv_layer(width, 3, g, first, name=name, use_bias=not self.batch_norm)(x)
                first = False
                if self.batch_norm:
                    x = GroupBatchNorm(g, axis_name=self.axis_name, name=f"bn{stage}_{i}")(
                        x, use_running_average=not train
                    )
                x = nn.relu(x)
            x = spatial_pool(x, "max", 2, 2, "VALID")
            x = GroupDropout(self.dropout_rate, g)(x, deterministic=not train)
        if self.flatten_head:
            x = x.reshape(x.shape[0], -1)
        else:
            x = groups.invariant_pool(x, g, group_reduce="max", spatial_reduce="mean")
        x = nn.relu(nn.Dense(self.dense_features, name="dense1")(x))
        x = nn.Dropout(self.dense_dropout_rate)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="dense2")(x).astype(jnp.float32)
