"""Veeling et al. (2018) style PCam DenseNet: ``densenet``, ``p4densenet``, ``p4mdensenet``.

Stem conv 3x3 (lifting for the group variants) to ``2 * growth_rate`` features; five dense blocks
of ``depth`` BN-ReLU-conv3x3 layers, each adding ``growth_rate`` features by concatenation
(concatenation along channels keeps the group-inner layout); transition layers between blocks
(BN-ReLU-conv1x1 to ``compression`` x channels, then 2x2/2 average pooling: 96 -> 48 -> 24 -> 12
-> 6, exact by the geometry rule); final BN-ReLU, global average pooling over space and group,
and a dense classifier.

Growth rates are parameter matched across groups: 26 (Z2), 13 (p4), 9 (p4m), i.e. about
26 / sqrt(|G|). The per-block depth is our reconstruction (the paper's exact layer count is not
reproduced here); ``growth_rate``, ``depth``, ``stem_features`` and ``compression`` are overrides,
e.g. ``create("p4mdensenet", growth_rate=2, depth=1)`` is a CPU-sized variant.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.equivariant import groups
from pcam_jax.equivariant.layers import GroupBatchNorm, conv_layer, spatial_pool

DEFAULT_GROWTH = {"z2": 26, "p4": 13, "p4m": 9}


class GroupDenseNet(nn.Module):
    """DenseNet for PCam: (N, 96, 96, 3) -> logits (N, num_classes)."""

    group: str = "z2"
    growth_rate: int | None = None
    depth: int = 4
    num_blocks: int = 5
    stem_features: int | None = None
    compression: float = 0.5
    num_classes: int = 2
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g = self.group
        k = self.growth_rate or DEFAULT_GROWTH[g]
        n = groups.group_order(g)

        def bn_relu(y: jax.Array, name: str) -> jax.Array:
            return nn.relu(
                GroupBatchNorm(g, axis_name=self.axis_name, name=name)(
                    y, use_running_average=not train
                )
            )

        x = conv_layer(self.stem_features or 2 * k, 3, g, True, name="stem", use_bias=False)(x)
        for b in range(self.num_blocks):
            for i in range(self.depth):
                y = bn_relu(x, f"block{b}_bn{i}")
                y = conv_layer(k, 3, g, False, name=f"block{b}_conv{i}", use_bias=False)(y)
                x = jnp.concatenate([x, y], axis=-1)
            if b < self.num_blocks - 1:
                feats = max(1, int(x.shape[-1] // n * self.compression))
                x = bn_relu(x, f"trans{b}_bn")
                x = conv_layer(feats, 1, g, False, name=f"trans{b}_conv", use_bias=False)(x)
                x = spatial_pool(x, "avg", 2, 2, "VALID")
        x = bn_relu(x, "final_bn")
        x = groups.invariant_pool(x, g, "mean", "mean")
        return nn.Dense(self.num_classes, name="classifier")(x).astype(jnp.float32)
