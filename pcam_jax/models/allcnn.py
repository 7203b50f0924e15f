"""All-CNN-C (Springenberg et al. 2014) as ``allcnn``, ``p4allcnn``, ``p4mallcnn``.

No pooling layers: stride-2 convolutions downsample, 1x1 convolutions follow, and the class
scores come from a 1x1 convolution to ``num_classes`` maps averaged over space (and, for the
group variants, over the group axis: ``groups.invariant_pool`` with mean/mean), so that group
logits are exactly invariant.

Geometry on 96x96 (the exactness rule of ``equivariant.groups``): the original 3x3 stride-2 'SAME'
convolution is NOT exact on even sizes (padding (0, 1)), and no symmetric padding fixes a 3x3
stride-2 window on an even size. The downsampling convolutions therefore use a 4x4 kernel with
stride 2 and padding (1, 1) (what 'SAME' gives for 4x4/2 on even sizes): 96 -> 48 -> 24, then a
3x3 'VALID' conv 24 -> 22, two 1x1 convs and global average pooling.

Layout: 3x3(96) 3x3(96) 4x4/2(96) | 3x3(192) 3x3(192) 4x4/2(192) | 3x3v(192) 1x1(192) 1x1(C).
Widths are divided by sqrt(|G|) for the group variants (parameter matched); the last 1x1 conv
outputs ``num_classes`` maps per group copy. Batch norm (group BN) after every conv except the
last is on by default (``batch_norm=False`` gives the original), and feature-map dropout follows
the two downsampling layers.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.equivariant import groups
from pcam_jax.equivariant.layers import GroupBatchNorm, GroupDropout, conv_layer, scaled_width


class GroupAllCNN(nn.Module):
    """All-CNN-C: (N, 96, 96, 3) -> logits (N, num_classes)."""

    group: str = "z2"
    base_widths: tuple[int, int] = (96, 192)
    width_multiplier: float = 1.0
    down_kernel: int = 4
    num_classes: int = 2
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)
    dropout_rate: float = 0.5
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g = self.group
        w1, w2 = (scaled_width(w, g, self.width_multiplier) for w in self.base_widths)
        # (features, kernel, stride, padding)
        plan = [
            (w1, 3, 1, "SAME"),
            (w1, 3, 1, "SAME"),
            (w1, self.down_kernel, 2, "SAME"),
            (w2, 3, 1, "SAME"),
            (w2, 3, 1, "SAME"),
            (w2, self.down_kernel, 2, "SAME"),
            (w2, 3, 1, "VALID"),
            (w2, 1, 1, "VALID"),
        ]
        for i, (feat, k, s, pad) in enumerate(plan):
            conv = conv_layer(
                feat,
                k,
                g,
                i == 0,
                name=f"conv{i}",
                strides=s,
                padding=pad,
                use_bias=not self.batch_norm,
            )
            x = conv(x)
            if self.batch_norm:
                x = GroupBatchNorm(g, axis_name=self.axis_name, name=f"bn{i}")(
                    x, use_running_average=not train
                )
            x = nn.relu(x)
            if s == 2:
                x = GroupDropout(self.dropout_rate, g)(x, deterministic=not train)
        x = conv_layer(self.num_classes, 1, g, False, name="classifier", padding="VALID")(x)
        return groups.invariant_pool(x, g, "mean", "mean").astype(jnp.float32)
