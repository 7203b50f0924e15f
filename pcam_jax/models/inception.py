"""Inception v3 (Szegedy et al. 2015), a layer-for-layer port of torchvision's ``Inception3``.

Submodule names mirror torchvision's attribute names (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1``,
``AuxLogits.conv0``, ``fc`` ...) so that ``pcam_jax.models.torch_convert`` maps a torchvision
state_dict onto these variables one key at a time. Input NHWC float32 (N, 299, 299, 3).

Transfer learning as in the study ("fixed feature extractor"): ``freeze_backbone=True`` keeps
every pretrained layer fixed (gradients stopped at the inputs of the two new heads, ``fc`` and
``AuxLogits.fc``, and batch norm always in inference mode, i.e. running statistics are neither
used from the batch nor updated). Use ``trainable_mask`` with ``optax.masked`` /
``optax.multi_transform`` so that weight decay does not touch the frozen weights either.

``transform_input=True`` (what torchvision sets for its ImageNet weights) maps ImageNet-normalised
inputs to the [-1, 1] scaling the Google weights were trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

HEADS: tuple[tuple[str, ...], ...] = (("fc",), ("AuxLogits", "fc"))


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU, as torchvision's ``BasicConv2d``."""

    features: int
    kernel_size: int | tuple[int, int]
    strides: int = 1
    padding: int | tuple[int, int] = 0
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            _pair(self.strides),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            name="conv",
        )(x)
        use_ra = self.frozen or not train
        x = nn.BatchNorm(
            use_running_average=use_ra,
            momentum=0.9,
            epsilon=1e-3,
            axis_name=None if use_ra else self.axis_name,
            name="bn",
        )(x)
        return nn.relu(x)


def _avg3(x: jax.Array) -> jax.Array:
    """torch ``F.avg_pool2d(x, 3, stride=1, padding=1)`` (zero padding counted)."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _max3s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(BasicConv2d, frozen=self.frozen, axis_name=self.axis_name)

        def c(f: int, k: Any, p: Any = 0, name: str | None = None) -> nn.Module:
            return conv(f, k, padding=p, name=name)

        b1 = c(64, 1, name="branch1x1")(x, train)
        b5 = c(48, 1, name="branch5x5_1")(x, train)
        b5 = c(64, 5, 2, name="branch5x5_2")(b5, train)
        b3 = c(64, 1, name="branch3x3dbl_1")(x, train)
        b3 = c(96, 3, 1, name="branch3x3dbl_2")(b3, train)
        b3 = c(96, 3, 1, name="branch3x3dbl_3")(b3, train)
        bp = c(self.pool_features, 1, name="branch_pool")(_avg3(x), train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(BasicConv2d, frozen=self.frozen, axis_name=self.axis_name)
        b3 = conv(384, 3, strides=2, name="branch3x3")(x, train)
        bd = conv(64, 1, name="branch3x3dbl_1")(x, train)
        bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train)
        bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd, train)
        return jnp.concatenate([b3, bd, _max3s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(BasicConv2d, frozen=self.frozen, axis_name=self.axis_name)
        c7 = self.channels_7x7

        def c(f: int, k: Any, p: Any, name: str) -> nn.Module:
            return conv(f, k, padding=p, name=name)

        b1 = c(192, 1, 0, "branch1x1")(x, train)
        b7 = c(c7, 1, 0, "branch7x7_1")(x, train)
        b7 = c(c7, (1, 7), (0, 3), "branch7x7_2")(b7, train)
        b7 = c(192, (7, 1), (3, 0), "branch7x7_3")(b7, train)
        bd = c(c7, 1, 0, "branch7x7dbl_1")(x, train)
        bd = c(c7, (7, 1), (3, 0), "branch7x7dbl_2")(bd, train)
        bd = c(c7, (1, 7), (0, 3), "branch7x7dbl_3")(bd, train)
        bd = c(c7, (7, 1), (3, 0), "branch7x7dbl_4")(bd, train)
        bd = c(192, (1, 7), (0, 3), "branch7x7dbl_5")(bd, train)
        bp = c(192, 1, 0, "branch_pool")(_avg3(x), train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(BasicConv2d, frozen=self.frozen, axis_name=self.axis_name)
        b3 = conv(192, 1, name="branch3x3_1")(x, train)
        b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3, train)
        b7 = conv(192, 1, name="branch7x7x3_1")(x, train)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7, train)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7, train)
        b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7, train)
        return jnp.concatenate([b3, b7, _max3s2(x)], axis=-1)


class InceptionE(nn.Module):
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(BasicConv2d, frozen=self.frozen, axis_name=self.axis_name)

        def c(f: int, k: Any, p: Any, name: str) -> nn.Module:
            return conv(f, k, padding=p, name=name)

        b1 = c(320, 1, 0, "branch1x1")(x, train)
        b3 = c(384, 1, 0, "branch3x3_1")(x, train)
        b3 = jnp.concatenate(
            [
                c(384, (1, 3), (0, 1), "branch3x3_2a")(b3, train),
                c(384, (3, 1), (1, 0), "branch3x3_2b")(b3, train),
            ],
            axis=-1,
        )
        bd = c(448, 1, 0, "branch3x3dbl_1")(x, train)
        bd = c(384, 3, 1, "branch3x3dbl_2")(bd, train)
        bd = jnp.concatenate(
            [
                c(384, (1, 3), (0, 1), "branch3x3dbl_3a")(bd, train),
                c(384, (3, 1), (1, 0), "branch3x3dbl_3b")(bd, train),
            ],
            axis=-1,
        )
        bp = c(192, 1, 0, "branch_pool")(_avg3(x), train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary head on Mixed_6e (17x17x768): avgpool 5/3, conv 1x1 128, conv 5x5 768, fc."""

    num_classes: int
    frozen: bool = False
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = partial(BasicConv2d, frozen=self.frozen, axis_name=self.axis_name)
        x = nn.avg_pool(x, (5, 5), (3, 3), padding="VALID")
        if min(x.shape[1:3]) < 5:
            raise ValueError(f"aux head needs a 17x17 Mixed_6e map (299x299 input), got {x.shape}")
        x = conv(128, 1, name="conv0")(x, train)
        x = conv(768, 5, name="conv1")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if self.frozen:
            x = jax.lax.stop_gradient(x)
        return nn.Dense(self.num_classes, name="fc")(x)


class InceptionV3(nn.Module):
    """Inception v3: (N, 299, 299, 3) -> logits (N, num_classes) [, aux logits (N, num_classes)].

    ``__call__(x, train=False, return_aux=False)``; with ``return_aux=True`` returns
    ``(logits, aux_logits)`` (needs ``aux_logits=True``).
    """

    num_classes: int = 2
    aux_logits: bool = True
    transform_input: bool = False
    freeze_backbone: bool = False
    dropout_rate: float = 0.5
    axis_name: str | None = None  # cross-device batch norm (shard_map / pmap axis)

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, return_aux: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array]:
        fz = self.freeze_backbone
        if self.transform_input:
            scale = jnp.array([0.229, 0.224, 0.225]) / 0.5
            shift = (jnp.array([0.485, 0.456, 0.406]) - 0.5) / 0.5
            x = x * scale + shift
        x = BasicConv2d(
            32, 3, strides=2, frozen=fz, axis_name=self.axis_name, name="Conv2d_1a_3x3"
        )(x, train)
        x = BasicConv2d(32, 3, frozen=fz, axis_name=self.axis_name, name="Conv2d_2a_3x3")(x, train)
        x = BasicConv2d(
            64, 3, padding=1, frozen=fz, axis_name=self.axis_name, name="Conv2d_2b_3x3"
        )(x, train)
        x = _max3s2(x)
        x = BasicConv2d(80, 1, frozen=fz, axis_name=self.axis_name, name="Conv2d_3b_1x1")(x, train)
        x = BasicConv2d(192, 3, frozen=fz, axis_name=self.axis_name, name="Conv2d_4a_3x3")(x, train)
        x = _max3s2(x)
        x = InceptionA(32, fz, axis_name=self.axis_name, name="Mixed_5b")(x, train)
        x = InceptionA(64, fz, axis_name=self.axis_name, name="Mixed_5c")(x, train)
        x = InceptionA(64, fz, axis_name=self.axis_name, name="Mixed_5d")(x, train)
        x = InceptionB(fz, axis_name=self.axis_name, name="Mixed_6a")(x, train)
        x = InceptionC(128, fz, axis_name=self.axis_name, name="Mixed_6b")(x, train)
        x = InceptionC(160, fz, axis_name=self.axis_name, name="Mixed_6c")(x, train)
        x = InceptionC(160, fz, axis_name=self.axis_name, name="Mixed_6d")(x, train)
        x = InceptionC(192, fz, axis_name=self.axis_name, name="Mixed_6e")(x, train)
        aux = None
        if self.aux_logits and (return_aux or self.is_initializing()):
            aux = InceptionAux(self.num_classes, fz, axis_name=self.axis_name, name="AuxLogits")(
                x, train
            )
        x = InceptionD(fz, axis_name=self.axis_name, name="Mixed_7a")(x, train)
        x = InceptionE(fz, axis_name=self.axis_name, name="Mixed_7b")(x, train)
        x = InceptionE(fz, axis_name=self.axis_name, name="Mixed_7c")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        if fz:
            x = jax.lax.stop_gradient(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        logits = nn.Dense(self.num_classes, name="fc")(x).astype(jnp.float32)
        if return_aux:
            if aux is None:
                raise ValueError("return_aux=True needs aux_logits=True")
            return logits, aux.astype(jnp.float32)
        return logits


def trainable_mask(params: Any, heads: Sequence[tuple[str, ...]] = HEADS) -> Any:
    """Pytree of bools like ``params``: True for the new heads (``fc``, ``AuxLogits/fc``) only.

    For ``freeze_backbone``: ``optax.masked(opt, trainable_mask(params))`` or
    ``optax.multi_transform`` so that the frozen backbone is never updated.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {k: any(k[: len(h)] == h for h in heads) for k in flat}
    return traverse_util.unflatten_dict(mask)
