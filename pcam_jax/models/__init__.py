"""Model zoo, created by name.

``create(name, **overrides)`` returns a flax.linen Module; ``module.init(rng, images,
train=False)`` and ``module.apply(variables, images, train=False)`` map NHWC float32 images
(N, 96, 96, 3) (299x299 for ``inception_v3``) to logits (N, 2). Train mode needs
``mutable=["batch_stats"]`` and a ``"dropout"`` rng.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcam_jax.models.allcnn import GroupAllCNN
from pcam_jax.models.cnn import GroupCNN
from pcam_jax.models.densenet import GroupDenseNet
from pcam_jax.models.inception import InceptionV3
from pcam_jax.models.resnet import GroupResNet

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
    "inception_v3": (InceptionV3, {}),
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


__all__ = ["create", "names", "input_size", "init_variables", "GROUP_OF"]
