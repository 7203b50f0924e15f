"""Model zoo, created by name.

``create(name, **overrides)`` returns a flax.linen Module; ``module.init(rng, images,
train=False)`` and ``module.apply(variables, images, train=False)`` map NHWC float32 images
(N, 96, 96, 3) (299x299 for ``inception_v3``) to logits (N, 2). Train mode needs
``mutable=["batch_stats"]`` and a ``"dropout"`` rng.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from pcam_jax.models.allcnn import GroupAllCNN
from pcam_jax.models.cnn import GroupCNN
from pcam_jax.models.densenet import GroupDenseNet
from pcam_jax.models.inception import InceptionV3

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


__all__ = ["create", "names", "input_size", "GROUP_OF"]
