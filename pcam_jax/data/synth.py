"""Synthetic PatchCamelyon: H&E-like patches in the exact PCam file format.

Images are rendered in optical-density space with the standard haematoxylin
and eosin stain vectors (Ruifrok & Johnston 2001): pink eosin stroma with
white gaps, purple haematoxylin nuclei. The class signal is a property of the
tissue, not of its orientation, as in PCam:

  label 0 (normal):  small, round, dark lymphocyte nuclei everywhere;
  label 1 (tumour):  a cluster of large, elongated, pale, pleomorphic nuclei
                     with nucleoli covering the centre 32x32 region.

Some normal patches carry tumour cells outside the centre (meta
``tumor_patch=True``, ``center_tumor_patch=False``), so the label depends on
the centre as it does in PCam. Every nucleus has a random orientation, and
every patch a random slide-level stain shift, so the signal is
rotation-invariant and an equivariant model has an edge.

Files: the PCam names, keys ``x`` (uint8 N,96,96,3) and ``y`` (uint8 N,1,1,1),
per-patch chunks, and the meta CSV columns with CAMELYON16-style slide names.
Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from pcam_jax.data.pcam_format import META_COLUMNS, PATCH_SHAPE, SPLITS, X_KEY, Y_KEY, split_paths
from pcam_jax.runtime.files import atomic_path, write_csv

DEFAULT_SIZES: dict[str, int] = {"train": 2048, "valid": 512, "test": 512}
X_CHUNKS: tuple[int, int, int, int] = (1, *PATCH_SHAPE)

# Stain vectors (rows: H, E), unit optical density per unit concentration.
_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], dtype=np.float32)
_STAINS /= np.linalg.norm(_STAINS, axis=1, keepdims=True)
_GRID = np.stack(np.meshgrid(np.arange(96), np.arange(96), indexing="ij"), -1).astype(np.float32)
_SLIDES_PER_SPLIT: dict[str, tuple[int, int]] = {"train": (20, 16), "valid": (6, 5), "test": (5, 4)}


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], (96, 96), from a cells x cells grid."""
    coarse = rng.random((cells, cells), dtype=np.float32)
    return ndimage.zoom(coarse, 96 / cells, order=1, mode="reflect")[:96, :96]


def _nuclei_density(
    rng: np.random.Generator, centres: np.ndarray, semi_axes: np.ndarray
) -> np.ndarray:
    """Union of randomly oriented soft-edged ellipses, (96, 96) in [0, 1].

    Each ellipse is evaluated in a window around its centre only, then
    max-combined into the canvas.
    """
    canvas = np.zeros((96, 96), np.float32)
    if len(centres) == 0:
        return canvas
    half = int(np.ceil(semi_axes.max())) + 2
    theta = rng.uniform(0, np.pi, len(centres)).astype(np.float32)
    origin = np.floor(centres).astype(np.int64) - half  # window corner, may be off-canvas
    offsets = np.arange(2 * half + 1, dtype=np.float32)
    dy = origin[:, 0, None, None] + offsets[None, :, None] - centres[:, 0, None, None]
    dx = origin[:, 1, None, None] + offsets[None, None, :] - centres[:, 1, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (c * dy + s * dx) / semi_axes[:, 0, None, None]
    v = (-s * dy + c * dx) / semi_axes[:, 1, None, None]
    windows = np.clip((1.0 - (u * u + v * v)) * 4.0, 0.0, 1.0)  # (K, W, W)
    padded = np.zeros((96 + 4 * half, 96 + 4 * half), np.float32)
    size = 2 * half + 1
    for (y0, x0), w in zip(origin + 2 * half, windows, strict=True):
        np.maximum(
            padded[y0 : y0 + size, x0 : x0 + size], w, out=padded[y0 : y0 + size, x0 : x0 + size]
        )
    return padded[2 * half : 2 * half + 96, 2 * half : 2 * half + 96]


def render_patch(rng: np.random.Generator, centre_tumour: bool, edge_tumour: bool) -> np.ndarray:
    """One synthetic H&E patch, uint8 (96, 96, 3)."""
    # Stroma (eosin) with white gaps.
    eosin = rng.uniform(0.15, 0.3) + 0.35 * _smooth_noise(rng, 6)
    gaps = _smooth_noise(rng, 4) > rng.uniform(0.75, 0.95)
    eosin = np.where(gaps, 0.03, eosin)
    # Lymphocytes: small round dark nuclei.
    n_lym = rng.integers(20, 140)
    lym_c = rng.uniform(0, 96, (n_lym, 2)).astype(np.float32)
    r = rng.uniform(1.8, 2.8, n_lym).astype(np.float32)
    lym_axes = np.stack([r, r * rng.uniform(0.85, 1.0, n_lym)], -1).astype(np.float32)
    haem = 1.1 * _nuclei_density(rng, lym_c, lym_axes)
    tumour_c = []
    if centre_tumour:
        k = rng.integers(6, 12)
        tumour_c.append(rng.uniform(30, 66, (k, 2)))
    if edge_tumour:
        k = rng.integers(3, 7)
        corner = rng.integers(0, 4)
        lo = np.array([[0, 0], [0, 70], [70, 0], [70, 70]][corner], np.float32)
        tumour_c.append(lo + rng.uniform(0, 26, (k, 2)))
    if tumour_c:
        tc = np.concatenate(tumour_c).astype(np.float32)
        a = rng.uniform(4.5, 8.0, len(tc))
        axes = np.stack([a, a * rng.uniform(0.45, 0.8, len(tc))], -1).astype(np.float32)
        tumour = _nuclei_density(rng, tc, axes)
        chromatin = 0.45 + 0.35 * _smooth_noise(rng, 24)
        nucleoli = _nuclei_density(
            rng, tc + rng.normal(0, 1.0, tc.shape).astype(np.float32), np.full_like(axes, 1.2)
        )
        haem = np.maximum(haem, tumour * chromatin + 0.6 * nucleoli)
        eosin = eosin * (1.0 - 0.5 * tumour)
    conc = np.stack([haem, eosin * (1.0 - 0.7 * np.clip(haem, 0, 1))], -1)  # (96, 96, 2)
    stain = _STAINS * rng.uniform(0.85, 1.15, (2, 1)).astype(np.float32)
    od = conc @ stain + rng.normal(0, 0.025, (96, 96, 3)).astype(np.float32)
    rgb = 255.0 * np.exp(-np.clip(od, 0, None) * 1.6)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_split(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Images uint8 (n, 96, 96, 3), labels uint8 (n,), and meta rows of one split."""
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    n_normal_wsi, n_tumour_wsi = _SLIDES_PER_SPLIT[split]
    labels = np.zeros(n, np.uint8)
    labels[: n // 2] = 1
    rng.shuffle(labels)
    images = np.empty((n, *PATCH_SHAPE), np.uint8)
    meta: list[dict] = []
    for i in range(n):
        centre = bool(labels[i])
        edge = (not centre) and rng.random() < 0.25
        images[i] = render_patch(rng, centre, edge)
        on_tumour_slide = centre or edge or rng.random() < 0.4
        if on_tumour_slide:
            number = int(rng.integers(1, n_tumour_wsi + 1))
        else:
            number = int(rng.integers(1, n_normal_wsi + 1))
        if split == "test":  # CAMELYON16 test slides are not named by kind
            wsi = f"camelyon16_test_{number + (0 if on_tumour_slide else n_tumour_wsi):03d}"
        else:
            wsi = f"camelyon16_train_{'tumor' if on_tumour_slide else 'normal'}_{number:03d}"
        meta.append(
            {
                "coord_y": int(rng.integers(0, 2000)) * 96,
                "coord_x": int(rng.integers(0, 2000)) * 96,
                "tumor_patch": centre or edge,
                "center_tumor_patch": centre,
                "wsi": wsi,
            }
        )
    return images, labels, meta


def write_pcam_arrays(
    out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray, meta: list[dict] | None
) -> list[Path]:
    """Writes one split in the PCam format, each file via a temporary name and a rename."""
    x_path, y_path, meta_path = split_paths(out_dir, split)
    with atomic_path(x_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(X_KEY, data=images, chunks=X_CHUNKS if len(images) else None)
    with atomic_path(y_path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(Y_KEY, data=labels.reshape(-1, 1, 1, 1).astype(np.uint8))
    written = [x_path, y_path]
    if meta is not None:
        write_csv(meta_path, META_COLUMNS, ([row[c] for c in META_COLUMNS] for row in meta))
        written.append(meta_path)
    return written


def write_synthetic_pcam(
    out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0
) -> list[Path]:
    """Writes train/valid/test synthetic PCam files into `out_dir`; returns their paths."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = Path(out_dir)
    written: list[Path] = []
    for split in SPLITS:
        if sizes[split] <= 0:
            continue
        images, labels, meta = make_split(split, sizes[split], seed)
        written += write_pcam_arrays(out, split, images, labels, meta)
    return written
