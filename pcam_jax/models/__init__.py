"""Model zoo, created by name.

``create(name, **overrides)`` returns a flax.linen Module; ``module.init(rng, images,
train=False)`` and ``module.apply(variables, images, train=False)`` map NHWC float32 images
(N, 96, 96, 3) (299x299 for ``inception_v3``) to logits (N, 2). Train mode needs
``mutable=["batch_stats"]`` and a ``"dropout"`` rng.

Transfer models (``inception_v3``, ``efficientnet_*``) start from ImageNet weights through
``pretrained.load_into`` (``config.init_from``); ``trainable_mask`` and ``head_mask`` tell the
optimizer which parameters are the new heads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from pcam_jax.models import efficientnet, inception
from pcam_jax.models.allcnn import GroupAllCNN
from pcam_jax.models.cnn import GroupCNN
from pcam_jax.models.densenet import GroupDenseNet
from pcam_jax.models.efficientnet import EfficientNetLite
from pcam_jax.models.inception import InceptionV3
from pcam_jax.models.resnet import GroupResNet
from pcam_jax.models.valid_resnet import ValidGroupResNet

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "cnn": (GroupCNN, {"group": "z2"}),
    "p4cnn": (GroupCNN, {"group": "p4"}),
    "p4mcnn": (GroupCNN, {"group": "p4m"}),
    "allcnn": (GroupAllCNN, {"group": "z2"}),
    "p4allcnn": (GroupAllCNN, {"group": "p4"}),
    "p4mallcnn": (GroupAllCNN, {"group": "p4m"}),
    "densenet": (GroupDenseNet, {"group": "z2"}),
    "p4densenet": (GroupDenseNet, {"group": "p4"}),
    "p4mdensenet": (GroupDenseNet, {"group": "p4m"}),
    "resnet": (GroupResNet, {"group": "z2"}),
    "p4resnet": (GroupResNet, {"group": "p4"}),
    "p4mresnet": (GroupResNet, {"group": "p4m"}),
    "resnet_valid": (ValidGroupResNet, {"group": "z2"}),
    "p4resnet_valid": (ValidGroupResNet, {"group": "p4"}),
    "p4mresnet_valid": (ValidGroupResNet, {"group": "p4m"}),
    "inception_v3": (InceptionV3, {}),
    "efficientnet_lite0": (EfficientNetLite, {"variant": "lite0"}),
    "efficientnet_lite1": (EfficientNetLite, {"variant": "lite1"}),
    "efficientnet_lite2": (EfficientNetLite, {"variant": "lite2"}),
    "p4_efficientnet_lite0": (EfficientNetLite, {"variant": "lite0", "group": "p4"}),
    "p4m_efficientnet_lite0": (EfficientNetLite, {"variant": "lite0", "group": "p4m"}),
}

GROUP_OF: dict[str, str] = {n: kw.get("group", "z2") for n, (_, kw) in _REGISTRY.items()}


def names() -> list[str]:
    """Names accepted by ``create``."""
    return list(_REGISTRY)


def create(name: str, **overrides: Any) -> nn.Module:
    """Instantiate model ``name`` with its defaults updated by ``overrides``."""
    try:
        cls, defaults = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {names()}") from None
    return cls(**{**defaults, **overrides})


def input_size(name: str) -> int:
    """Spatial input size the model expects (96, or 299 for Inception v3)."""
    return 299 if name == "inception_v3" else 96


def head_mask(model: nn.Module, params: Any) -> Any:
    """Pytree of bools like `params`: True for a transfer model's new heads (``HEADS`` of its
    module: ``fc`` and ``AuxLogits/fc`` for Inception, ``fc`` for EfficientNet), False for the
    pretrained backbone; None for models trained from scratch (no backbone)."""
    heads = {InceptionV3: inception.HEADS, EfficientNetLite: efficientnet.HEADS}.get(type(model))
    if heads is None:
        return None
    return inception.trainable_mask(params, heads)


def trainable_mask(model: nn.Module, params: Any) -> Any:
    """None (train everything); ``head_mask`` for a frozen backbone (``freeze_backbone``); for
    a partly frozen one (EfficientNet's ``frozen_blocks``), False for its frozen submodules."""
    if getattr(model, "freeze_backbone", False):
        return head_mask(model, params)
    frozen = model.frozen_modules() if isinstance(model, EfficientNetLite) else ()
    if not frozen:
        return None
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[0] not in frozen for k in flat})


def init_variables(model: nn.Module, key: jax.Array, x: jax.Array | tuple[int, ...]) -> Any:
    """``model.init(key, x, train=False)`` as one jitted program, quick to compile on CPU.

    ``x`` is an example batch or its shape. On CPU the program is compiled without LLVM
    optimisation: XLA:CPU otherwise spends tens of seconds optimising the threefry random-number
    code of every parameter (about 30 s for p4mcnn on 2 cores) for a program that runs once, in
    milliseconds; unoptimised it compiles in 1-2 s. Values equal ``jax.jit(model.init)``'s up to
    float rounding (1 ulp).
    """
    if isinstance(x, tuple):
        x = jnp.zeros(x, jnp.float32)
    lowered = jax.jit(partial(model.init, train=False)).lower(key, x)
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(key, x)


__all__ = [
    "create",
    "names",
    "input_size",
    "init_variables",
    "head_mask",
    "trainable_mask",
    "GROUP_OF",
]
