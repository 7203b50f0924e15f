"""Synthetic whole-slide images made of REAL PCam patches, for tests and benchmarks.

A slide is a mosaic of 96x96 patches from the subset's valid split (tumour patches inside a
known rectangle, normal ones around it) inside a white margin, written by tifffile as a tiled,
pyramidal TIFF (level 0 and a 4x-reduced level, 256-pixel tiles) with its resolution, which
OpenSlide reads as a generic tiled TIFF with openslide.mpp-x/y.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

GRID = 8  # patches per side of the mosaic
MARGIN = 96  # white border, a multiple of the 32-pixel cell
TUMOUR = (slice(2, 6), slice(3, 7))  # the tumour patches: rows 2-5, columns 3-6


def real_patches(
    root: Path, grid: int = GRID, tumour: tuple[slice, slice] = TUMOUR
) -> tuple[np.ndarray, np.ndarray]:
    """(GRID*GRID, 96, 96, 3) real valid patches laid out row by row, and their labels: tumour
    patches inside TUMOUR, normal ones elsewhere."""
    labels = np.zeros((grid, grid), int)
    labels[tumour] = 1
    files = {y: sorted((root / "valid" / str(y)).iterdir()) for y in (0, 1)}
    taken = {0: 0, 1: 0}
    out = []
    for y in labels.ravel():
        out.append(np.asarray(Image.open(files[y][taken[y]]).convert("RGB")))
        taken[y] += 1
    return np.stack(out), labels


def mosaic(patches: np.ndarray) -> np.ndarray:
    """The patches (grid * grid, 96, 96, 3), row by row, inside a white MARGIN."""
    grid = round(len(patches) ** 0.5)
    side = grid * 96 + 2 * MARGIN
    image = np.full((side, side, 3), 255, np.uint8)
    for k, patch in enumerate(patches):
        r, c = divmod(k, grid)
        image[MARGIN + r * 96 : MARGIN + (r + 1) * 96, MARGIN + c * 96 : MARGIN + (c + 1) * 96] = (
            patch
        )
    return image


def write_slide(
    path: Path, image: np.ndarray, mpp: float | None, compression: str | None = None
) -> Path:
    """A tiled pyramidal TIFF: level 0 and a 4x-reduced level, 256-pixel tiles."""
    with tifffile.TiffWriter(path) as tif:
        for level, ds in enumerate((1, 4)):
            extra = {}
            if mpp is not None:
                res = 1e4 / (mpp * ds)
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            reduced = np.asarray(
                Image.fromarray(image).reduce(ds) if ds > 1 else Image.fromarray(image)
            )
            tif.write(
                reduced,
                tile=(256, 256),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if level else 0,
                **extra,
            )
    return path
