"""Convert torchvision's Inception v3 ImageNet state_dict to flax variables for ``InceptionV3``.

Depends on numpy only (``read_state_dict`` reads a ``.pth`` without torch, through
``models.torch_checkpoint``, imported when called), so the fixture generator in
``tests/fixtures/`` can load this file in a torch-only environment. ``config.init_from`` reaches
``load_pretrained`` through ``models.pretrained``, the one entry for every transfer model.

Name mapping (torch key -> flax path, ``/``-separated, same module names as torchvision)::

    X.conv.weight        (O, I, kh, kw) -> params/X/conv/kernel  (kh, kw, I, O)
    X.bn.weight          (C,)           -> params/X/bn/scale
    X.bn.bias            (C,)           -> params/X/bn/bias
    X.bn.running_mean    (C,)           -> batch_stats/X/bn/mean
    X.bn.running_var     (C,)           -> batch_stats/X/bn/var
    X.bn.num_batches_tracked            -> dropped
    fc.weight / AuxLogits.fc.weight (O, I) -> params/.../fc/kernel (I, O); ``.bias`` -> bias

Usage for the study's transfer learning (new 2-class heads over a frozen ImageNet backbone)::

    model = create("inception_v3", transform_input=True, freeze_backbone=True)
    variables = model.init(rng, jnp.zeros((1, 299, 299, 3)))
    variables = load_pretrained(variables, "inception_v3_google-0cc3c7bd.pth")
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HEAD_PREFIXES: tuple[str, ...] = ("fc.", "AuxLogits.fc.")


def key_to_path(key: str) -> tuple[str, ...] | None:
    """Map one torchvision key to ``(collection, *module_path, leaf)``; None if dropped."""
    *mods, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None
    kind = mods[-1]
    if kind == "conv" and leaf == "weight":
        return ("params", *mods, "kernel")
    if kind == "bn":
        table = {
            "weight": ("params", "scale"),
            "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var"),
        }
        coll, name = table[leaf]
        return (coll, *mods, name)
    if kind == "fc":
        return ("params", *mods, "kernel" if leaf == "weight" else "bias")
    raise KeyError(f"unexpected Inception v3 key {key!r}")


def convert_array(key: str, value: np.ndarray) -> np.ndarray:
    """Layout conversion: conv OIHW -> HWIO, linear (out, in) -> (in, out), others as is."""
    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2:
        return value.T
    return value


def convert_state_dict(
    state_dict: Mapping[str, Any], skip_prefixes: tuple[str, ...] = ()
) -> dict[str, dict]:
    """torchvision state_dict (name -> array/tensor) -> nested ``{"params", "batch_stats"}``.

    Keys starting with one of ``skip_prefixes`` (e.g. ``HEAD_PREFIXES``) are left out.
    """
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        if key.startswith(skip_prefixes):
            continue
        path = key_to_path(key)
        if path is None:
            continue
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().numpy()
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = convert_array(key, value)
    return out


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``inception_v3_google-*.pth`` (zip or legacy layout) or an ``.npz`` of the same keys,
    without torch (``pcam_jax.models.torch_checkpoint``)."""
    from pcam_jax.models import torch_checkpoint  # here, not at the top: this file loads alone

    return torch_checkpoint.read_state_dict(path)


def _merge(dst: Any, src: Mapping, path: str = "") -> Any:
    if not isinstance(src, Mapping):
        if tuple(np.shape(dst)) != tuple(np.shape(src)):
            raise ValueError(
                f"shape mismatch at {path}: model {np.shape(dst)}, loaded {np.shape(src)}"
            )
        return np.asarray(src, dtype=np.float32)
    if not isinstance(dst, Mapping):
        raise ValueError(f"unexpected subtree at {path}")
    out = dict(dst)
    for k, v in src.items():
        if k not in dst:
            raise KeyError(f"{path}/{k} not in the model")
        out[k] = _merge(dst[k], v, f"{path}/{k}")
    return out


def load_pretrained(
    variables: Mapping[str, Any],
    state_dict_or_path: Mapping[str, Any] | str | Path,
    keep_heads: bool | None = None,
) -> dict[str, Any]:
    """Overwrite ``variables`` (from ``InceptionV3.init``) with converted torchvision weights.

    The heads (``fc``, ``AuxLogits.fc``) are loaded only when ``keep_heads`` (default: when the
    shapes match, i.e. a 1000-class model); otherwise the freshly initialised heads stay.
    Raises if a backbone variable is missing or has the wrong shape.
    """
    sd = state_dict_or_path
    if isinstance(sd, (str, Path)):
        sd = read_state_dict(sd)
    if keep_heads is None:
        fc = np.shape(variables["params"]["fc"]["kernel"])
        keep_heads = tuple(np.shape(sd["fc.weight"])[::-1]) == tuple(fc)
    converted = convert_state_dict(sd, () if keep_heads else HEAD_PREFIXES)
    out = dict(variables)
    for coll, tree in converted.items():
        out[coll] = _merge(variables[coll], tree, coll)
    _check_complete(out, converted, keep_heads)
    return out


def _flat_keys(tree: Mapping, prefix: tuple = ()) -> set[tuple]:
    keys = set()
    for k, v in tree.items():
        if isinstance(v, Mapping):
            keys |= _flat_keys(v, (*prefix, k))
        else:
            keys.add((*prefix, k))
    return keys


def _check_complete(variables: Mapping, converted: Mapping, keep_heads: bool) -> None:
    for coll in ("params", "batch_stats"):
        want = _flat_keys(variables[coll])
        if not keep_heads:
            want = {k for k in want if k[0] != "fc" and k[:2] != ("AuxLogits", "fc")}
        missing = want - _flat_keys(converted[coll])
        if missing:
            raise KeyError(
                f"{coll}: {len(missing)} variables not in the state_dict, e.g. "
                f"{sorted(missing)[:3]}"
            )


# ------------------------------------------------------------------ synthetic weights for tests


def load_key_table(path: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """Read the committed table of torchvision's Inception v3 keys: [(key, shape, dtype)]."""
    return [(k, tuple(s), d) for k, s, d in json.loads(Path(path).read_text())["keys"]]


def synthetic_state_dict(
    table: list[tuple[str, tuple[int, ...], str]], seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic random weights for every key (numpy only; same values in torch and jax).

    Each key has its own generator seeded by (seed, crc32(key)), so order does not matter.
    Scales keep activations O(1) through the 94 conv-BN-ReLU layers in inference mode.
    """
    sd: dict[str, np.ndarray] = {}
    for key, shape, _dtype in table:
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            sd[key] = np.zeros(shape, np.int64)
            continue
        if leaf == "weight" and len(shape) == 4:
            fan_in = int(np.prod(shape[1:]))
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif leaf == "weight" and len(shape) == 2:
            v = rng.normal(0.0, np.sqrt(1.0 / shape[1]), shape)
        elif leaf == "weight":  # bn gamma
            v = rng.uniform(0.5, 1.5, shape)
        elif leaf == "running_var":
            v = rng.uniform(0.5, 2.0, shape)
        else:  # bn beta, running_mean, fc bias
            v = rng.normal(0.0, 0.1, shape)
        sd[key] = v.astype(np.float32)
    return sd


def reference_input(seed: int = 1234) -> np.ndarray:
    """Two deterministic, very different NHWC images (2, 299, 299, 3) float32 for the
    conversion test: white noise, and a scaled, shifted noise plus a colour ramp."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 299, 299, 3))
    ramp = np.linspace(-2.0, 2.0, 299)
    x[1] = 2.0 * x[1] - 0.5 + ramp[:, None, None] * np.array([1.0, -1.0, 0.5])
    return x.astype(np.float32)
