"""Explanation figures: per-patch panels, error galleries, and views of the group structure.

What each figure shows
----------------------
panel      one patch: the image with PCam's labelled centre 32x32 outlined, its p_tumour (and
           label when known), then one overlay per attribution method (``explain.attribution``;
           each map scaled to its own 99th percentile, so colours compare within a map only).
gallery    one PNG sheet from a predictions CSV (``pcam-predict`` or ``pcam-eval``): rows of the
           most confident true tumour and true normal patches, the worst false positives
           (normal, highest p) and the worst false negatives (tumour, lowest p), each patch
           above its map. Without labels, the highest and lowest p.
filters    the learned lifting filters of a p4/p4m model in their 4 or 8 poses: pose ``g`` of a
           filter is ``T_g`` applied to it (``groups.lift_kernel``), which is the whole filter
           bank the layer convolves with.
orbit      the feature maps of a patch ``x`` and of ``T_h x`` at one layer, and ``L_h`` applied to
           the first (rotate/mirror the maps and permute the group copies,
           ``groups.transform_group_features``). For a G-CNN the last two are equal (the largest
           difference is printed on the figure); for a plain model (z2, where ``L_h`` only moves
           the maps) they are not.

Layout: images are uint8 (N, 96, 96, 3); maps float (N, 96, 96); group feature maps NHWC with
the group axis inner (``pcam_jax.equivariant.groups``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.equivariant import groups
from pcam_jax.errors import InputError, ModelError
from pcam_jax.explain.attribution import float_preprocess, spatial_layer_shapes, tap_layer
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.plotting import pyplot, save_figure

CENTRE = 32  # PCam labels a patch by its centre 32x32 pixels
GALLERY_ROWS: tuple[tuple[str, str], ...] = (
    ("confident_tumour", "most confident tumour (label 1, highest p)"),
    ("confident_normal", "most confident normal (label 0, lowest p)"),
    ("false_positives", "worst false positives (label 0, highest p)"),
    ("false_negatives", "worst false negatives (label 1, lowest p)"),
)


def _centre_box(ax: Any, size: int) -> None:
    from matplotlib.patches import Rectangle

    lo = (size - CENTRE) / 2 - 0.5
    ax.add_patch(Rectangle((lo, lo), CENTRE, CENTRE, fill=False, edgecolor="lime", linewidth=1))


def _scaled(m: np.ndarray) -> np.ndarray:
    top = float(np.percentile(m, 99))
    return np.clip(m / top, 0, 1) if top > 0 else np.zeros_like(m)


def _overlay(ax: Any, image: np.ndarray, m: np.ndarray) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.imshow(_scaled(m), cmap="inferno", alpha=0.6, vmin=0, vmax=1, interpolation="bilinear")
    _centre_box(ax, image.shape[0])


def _caption(p: float, label: int | None) -> str:
    return f"p={p:.3f}" + ("" if label is None or label < 0 else f" label {label}")


def save_panel(
    path: Path,
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    p_tumour: float,
    label: int | None = None,
    title: str = "",
) -> None:
    """PNG: the patch (centre outlined, p_tumour) then one overlay per method in `maps`."""
    plt = pyplot()
    n = 1 + len(maps)
    fig, axes = plt.subplots(1, n, figsize=(2.1 * n, 2.5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image, interpolation="nearest")
    _centre_box(ax, image.shape[0])
    ax.set_title(_caption(p_tumour, label), fontsize=8)
    for ax, (method, m) in zip(axes[0, 1:], maps.items(), strict=True):
        _overlay(ax, image, m)
        ax.set_title(method.replace("_", " "), fontsize=8)
    for ax in axes[0]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def gallery_selection(
    p: np.ndarray, labels: np.ndarray | None, k: int = 6
) -> dict[str, np.ndarray]:
    """Row name -> indices into `p` (up to k each) of GALLERY_ROWS; without labels, the k
    highest and k lowest p as "highest_p" and "lowest_p"."""
    order = np.argsort(-p, kind="stable")  # highest p first
    if labels is None or np.any(labels < 0):
        return {"highest_p": order[:k], "lowest_p": order[::-1][:k]}
    tumour, normal = order[labels[order] == 1], order[labels[order] == 0]
    pred = p >= 0.5
    return {
        "confident_tumour": tumour[:k],
        "confident_normal": normal[::-1][:k],
        "false_positives": np.array([i for i in normal if pred[i]][:k], dtype=int),
        "false_negatives": np.array([i for i in tumour[::-1] if not pred[i]][:k], dtype=int),
    }


def save_gallery(
    path: Path,
    images: np.ndarray,
    maps: np.ndarray,
    p: np.ndarray,
    labels: np.ndarray | None,
    rows: dict[str, np.ndarray],
    method: str,
    title: str = "",
    dpi: int = 100,
) -> None:
    """PNG sheet: per row of `rows`, its patches (top) above their `method` maps (bottom).

    `images`, `maps`, `p`, `labels` are indexed by the row indices."""
    plt = pyplot()
    k = max([len(v) for v in rows.values()] + [1])
    names = dict(GALLERY_ROWS) | {"highest_p": "highest p", "lowest_p": "lowest p"}
    fig = plt.figure(figsize=(1.35 * k, 2.95 * len(rows) + 0.3), dpi=dpi)
    heading, *sections = fig.subfigures(
        len(rows) + 1, 1, height_ratios=[0.3] + [2.95] * len(rows), squeeze=False
    )[:, 0]
    heading.text(
        0.5, 0.5, title or f"{method.replace('_', ' ')} maps", ha="center", va="center", fontsize=9
    )
    for section, (name, idx) in zip(sections, rows.items(), strict=True):
        section.suptitle(f"{names.get(name, name)}: {len(idx)}", fontsize=8, fontweight="bold")
        axes = section.subplots(2, k, squeeze=False)
        section.subplots_adjust(left=0.02, right=0.98, top=0.84, bottom=0.02, hspace=0.25)
        for c in range(k):
            top, bottom = axes[0, c], axes[1, c]
            top.set_axis_off()
            bottom.set_axis_off()
            if c >= len(idx):
                continue
            i = int(idx[c])
            top.imshow(images[i], interpolation="nearest")
            _centre_box(top, images.shape[1])
            label = None if labels is None else int(labels[i])
            top.set_title(_caption(float(p[i]), label), fontsize=7)
            _overlay(bottom, images[i], maps[i])
    save_figure(fig, path)


# --- predictions CSVs -----------------------------------------------------------------------


def read_predictions(path: Path) -> dict[str, Any]:
    """Rows of a pcam-predict (path[, index], label, p_tumour) or pcam-eval (index, label,
    p_tumour, ...) CSV: {"path": list | None, "index": array | None, "label": int array (-1 =
    unknown), "p_tumour": float array}."""
    if not path.is_file():
        raise InputError(
            f"{path}: no such predictions file (write one with pcam-predict or pcam-eval)"
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: holds no predictions")
    cols = set(rows[0])
    if "p_tumour" not in cols or not cols & {"path", "index"}:
        raise InputError(
            f"{path}: expected the columns of pcam-predict (path, label, p_tumour) or pcam-eval "
            f"(index, label, p_tumour); found {sorted(cols)}"
        )
    try:
        p = np.array([float(r["p_tumour"]) for r in rows], np.float32)
        labels = np.array(
            [int(r["label"]) if r.get("label", "") not in ("", None) else -1 for r in rows], int
        )
        index = (
            np.array([int(r["index"]) if r["index"] != "" else -1 for r in rows], int)
            if "index" in cols
            else None
        )
    except ValueError as e:
        raise InputError(
            f"{path}: unreadable value ({e}); is it an unmodified prediction CSV?"
        ) from e
    return {
        "path": [r["path"] for r in rows] if "path" in cols else None,
        "index": index,
        "label": labels,
        "p_tumour": p,
    }


# --- group views ----------------------------------------------------------------------------


def lifting_filter_poses(loaded: LoadedModel, layer: str | None = None) -> np.ndarray:
    """(F, |G|, k, k, 3): every lifting filter in each of its |G| poses (pose g = T_g filter).

    `layer` is the lifting convolution's parameter name (default: the first layer that has a
    "kernel" of shape (k, k, 3, F)).
    """
    group = groups_of(loaded)
    params = jax.device_get(loaded.variables["params"])
    names = [n for n, v in params.items() if isinstance(v, dict) and np.ndim(v.get("kernel")) == 4]
    names = [n for n in names if np.shape(params[n]["kernel"])[2] == 3]
    if layer is None:
        if not names:
            raise ModelError("the model has no lifting convolution on RGB input")
        layer = names[0]
    if layer not in params or "kernel" not in params[layer]:
        raise ModelError(f"no convolution {layer!r}; lifting layers: {names}")
    w = jnp.asarray(params[layer]["kernel"], jnp.float32)  # (k, k, 3, F)
    bank = np.asarray(groups.lift_kernel(w, group))  # (k, k, 3, F*|G|), group axis inner
    k, _, cin, _ = w.shape
    n = groups.group_order(group)
    return bank.reshape(k, k, cin, -1, n).transpose(3, 4, 0, 1, 2)


def groups_of(loaded: LoadedModel) -> str:
    """The model's group: "z2", "p4" or "p4m"."""
    from pcam_jax import models

    return models.GROUP_OF.get(loaded.config.model.name, "z2")


def save_filter_poses(path: Path, poses: np.ndarray, group: str, count: int = 8) -> None:
    """PNG grid: rows = the first `count` filters, columns = their |G| poses (RGB, each filter
    scaled to its own range so its pattern shows)."""
    plt = pyplot()
    poses = poses[:count]
    f, n = poses.shape[:2]
    fig, axes = plt.subplots(f, n, figsize=(0.9 * n + 0.6, 0.9 * f + 0.5), dpi=100, squeeze=False)
    names = [f"m{int(m)}r{int(r)}" for m, r in groups.elements(group)]
    for i in range(f):
        lo, hi = poses[i].min(), poses[i].max()
        for g in range(n):
            ax = axes[i, g]
            ax.imshow((poses[i, g] - lo) / (hi - lo + 1e-12), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(names[g], fontsize=7)
        axes[i, 0].set_ylabel(f"filter {i}", fontsize=7)
    fig.suptitle(f"lifting filters in their {n} poses ({group}; pose g = T_g filter)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def layer_features(loaded: LoadedModel, images: np.ndarray, layer: str) -> np.ndarray:
    """float32 (N, h, w, C*|G|): the output of module `layer` for uint8 patches `images`."""
    spatial_layer_shapes(loaded.model, loaded.variables, layer, images.shape[1])
    with tap_layer(layer) as captured:
        loaded.model.apply(
            loaded.variables,
            float_preprocess(loaded.preprocess)(jnp.asarray(images)),
            train=False,
        )
    return np.asarray(captured[0], np.float32)


def orbit_views(loaded: LoadedModel, image: np.ndarray, layer: str, h: int) -> dict[str, Any]:
    """Features at `layer` of x, of T_h x and L_h applied to the first; their largest
    difference, relative to the largest feature."""
    group = groups_of(loaded)
    if not 0 <= h < 8:
        raise ModelError(f"transform {h}: expected 0..7 (D4 elements, 4*m + r)")
    moved_image = groups.transform_plane(image[None], "p4m", h)
    f_x = layer_features(loaded, image[None], layer)
    f_tx = layer_features(loaded, np.ascontiguousarray(moved_image), layer)
    if group == "z2":
        l_f = np.asarray(groups.transform_plane(f_x, "p4m", h))
    elif h >= groups.group_order(group):
        raise ModelError(f"{group} has no element {h}: choose 0..{groups.group_order(group) - 1}")
    else:
        l_f = np.asarray(groups.transform_group_features(f_x, group, h))
    scale = float(np.abs(f_tx).max()) or 1.0
    return {
        "group": group,
        "h": h,
        "image": image,
        "moved_image": np.asarray(moved_image[0]),
        "f_x": f_x[0],
        "f_tx": f_tx[0],
        "l_f_x": l_f[0],
        "relative_max_difference": float(np.abs(f_tx - l_f).max()) / scale,
    }


def save_orbit(path: Path, views: dict[str, Any], feature: int = 0) -> None:
    """PNG: x and T_h x; then, for one feature, its |G| copies in f(x), f(T_h x) and L_h f(x)."""
    plt = pyplot()
    group = views["group"]
    n = groups.group_order(group)
    copies = [views[k][..., feature * n : (feature + 1) * n] for k in ("f_x", "f_tx", "l_f_x")]
    fig, axes = plt.subplots(3, n + 1, figsize=(1.3 * (n + 1), 4.2), dpi=100, squeeze=False)
    lo = min(float(c.min()) for c in copies)
    hi = max(float(c.max()) for c in copies)
    images = (views["image"], views["moved_image"], None)
    rows = ("f(x)", "f(T_h x)", "L_h f(x)")
    for r in range(3):
        ax = axes[r, 0]
        ax.set_axis_off()
        if images[r] is not None:
            ax.imshow(images[r], interpolation="nearest")
            ax.set_title("x" if r == 0 else "T_h x", fontsize=7)
        for g in range(n):
            ax = axes[r, g + 1]
            ax.imshow(copies[r][..., g], cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"copy {g}", fontsize=7)
            if g == 0:
                ax.set_ylabel(rows[r], fontsize=7)
    m, rot = groups.elements("p4m")[views["h"]]
    fig.suptitle(
        f"{group} model, feature {feature}, h = (mirror {int(m)}, {int(rot)} quarter turns): "
        f"max |f(T_h x) - L_h f(x)| / max|f| = {views['relative_max_difference']:.2e}",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    save_figure(fig, path)
