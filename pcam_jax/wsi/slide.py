"""A slide as pcam-slide reads it: opened, measured, its tissue found, read in blocks.

Geometry (the PCam convention). The model takes P x P patches (P = 96) at its resolution m
(um/px; 0.972 for PCam) and its label concerns the central 32 x 32 pixels. The slide is cut into
square cells of S model pixels (the stride, 32 by default); the prediction of the P-pixel window
centred on a cell is that cell's value. So with S = 32 each window's labelled centre is exactly
its cell and the windows overlap by 64 pixels. Cell (i, j) (row, column) covers level-0 pixels
``[j * c, (j + 1) * c) x [i * c, (i + 1) * c)`` with ``c = S * m / mpp0``; level-0 coordinates
everywhere (tiles.csv, tumour.geojson), as OpenSlide and QuPath use them.

Resolution. mpp0 is the slide's own (``openslide.mpp-x``/``-y``) or --mpp; the pixels are read at
the pyramid level whose resolution is nearest to m (in log scale) and resampled to m (Pillow's
antialiased bilinear); when that level is at m exactly, no resampling happens and a patch placed
on the slide's pixel grid reaches the model bit for bit. A level's resolution is mpp0 times its
true downsample (``wsi.pyramid``: levels padded to whole tiles, as some scanners write them, are
read where their pixels are, not where OpenSlide's size ratio puts them).

Tissue. Otsu's threshold on the HSV saturation of a thumbnail (at most THUMBNAIL_SIZE pixels a
side, no finer than THUMBNAIL_PX_PER_CELL pixels a cell side, read from a low pyramid level),
clipped to SATURATION_RANGE, separates stained tissue from glass; a cell is predicted when at
least ``tissue_threshold`` of its area is tissue. Background is never read at full resolution.

Blocks. Cells are read n x n at a time (BLOCK by default; the predictor chooses): one OpenSlide
read_region of the block plus the window margin, ``n * S + P - S`` model pixels a side
(``read_block``); only blocks holding tissue are read (``tissue_blocks``). ``wsi.predictors``
turns blocks into probabilities.
Imports: runtime, errors, wsi.pyramid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcam_jax.errors import SlideError
from pcam_jax.wsi.pyramid import level_extent, openslide_location, slide_downsamples

THUMBNAIL_SIZE = 2048  # longest side of the tissue-detection image, in pixels
THUMBNAIL_PX_PER_CELL = 4  # its resolution need not be finer than this, per cell side
BLOCK = 8  # cells per side of one read
# Otsu's threshold is clipped to this range: below it lies glass with JPEG noise; above it,
# Otsu has split stained tissue itself (pale eosin from haematoxylin) when little glass shows
SATURATION_RANGE = (0.04, 0.10)
# Level-0 resolutions (um/px) pcam-slide accepts: from beyond 100x scans (0.1) to 2.5x-like
# overviews (4.0); a model at 0.972 um/px reads coarser slides only by upsampling them.
MPP_RANGE = (0.05, 4.0)


@dataclass(frozen=True)
class SlideGeometry:
    """How the slide maps to model pixels and cells.

    mpp0: level-0 um/px; level, level_mpp, level_downsample: the level read (its true
    downsample, ``wsi.pyramid``); openslide_downsample: OpenSlide's ratio for that level (not
    level_downsample when the level is padded to whole tiles); padded_levels: the slide's
    levels stored padded to whole tiles; model_mpp: m;
    scale: level pixels per model pixel (m / level_mpp); cell_model: S (model px);
    cell0: c (level-0 px, a float); rows, cols: the cell grid over the slide.
    """

    mpp0: float
    level: int
    level_mpp: float
    level_downsample: float
    openslide_downsample: float
    padded_levels: tuple[int, ...]
    model_mpp: float
    scale: float
    cell_model: int
    patch: int
    cell0: float
    rows: int
    cols: int


def open_slide(path: str | Path) -> Any:
    """An openslide.OpenSlide of `path`, or SlideError naming it."""
    import openslide

    path = Path(path)
    if path.is_dir():
        raise SlideError(f"{path}: a folder, not a slide file")
    if not path.is_file():
        raise SlideError(f"{path}: no such file")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(
            f"{path}: not a slide OpenSlide can read (SVS, NDPI, MRXS, SCN, tiled TIFF, ...)"
        ) from None
    except openslide.OpenSlideError as e:
        raise SlideError(f"{path}: OpenSlide could not read it ({e})") from None


def check_mpp(mpp: float, where: str) -> float:
    """`mpp` if it is a finite level-0 resolution within MPP_RANGE, else SlideError naming
    `where` (the flag or the slide)."""
    low, high = MPP_RANGE
    if not (math.isfinite(mpp) and low <= mpp <= high):
        raise SlideError(
            f"{where}: {mpp} um per pixel is not a level-0 resolution pcam-slide can use "
            f"(expected {low}-{high}; about 0.25 at 40x, 0.5 at 20x)"
        )
    return float(mpp)


def slide_mpp(slide: Any, path: str | Path, override: float | None) -> float:
    """Level-0 um/px: `override` when given, else the slide's openslide.mpp-x/-y (their mean);
    either must lie in MPP_RANGE."""
    if override is not None:
        return check_mpp(override, f"--mpp={override}")
    props = slide.properties
    try:
        x, y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
    except (KeyError, ValueError):
        raise SlideError(
            f"{path}: the slide does not record its resolution (no openslide.mpp-x/y); give "
            "--mpp=MICRONS_PER_PIXEL of level 0 (about 0.25 at 40x, 0.5 at 20x)"
        ) from None
    if not (x > 0 and y > 0):
        raise SlideError(f"{path}: invalid resolution mpp-x={x}, mpp-y={y}; give --mpp")
    if abs(x - y) > 0.02 * max(x, y):
        raise SlideError(f"{path}: non-square pixels (mpp-x={x}, mpp-y={y}) are not supported")
    return check_mpp((x + y) / 2, f"{path} (openslide.mpp-x/y; --mpp overrides it)")


def slide_geometry(
    slide: Any, mpp0: float, model_mpp: float, stride: int, patch: int
) -> SlideGeometry:
    """The level nearest to `model_mpp` (log scale; the finer on a tie) and the cell grid."""
    if stride <= 0 or stride > patch or (patch - stride) % 2:
        raise SlideError(
            f"--stride={stride}: expected 1..{patch} with {patch} - stride even (the window must "
            "centre on its cell)"
        )
    factors = slide_downsamples(slide)
    mpps = [mpp0 * d for d in factors]
    level = min(range(len(mpps)), key=lambda i: (abs(math.log(mpps[i] / model_mpp)), i))
    w0, h0 = slide.dimensions
    cell0 = stride * model_mpp / mpp0
    return SlideGeometry(
        mpp0=mpp0,
        level=level,
        level_mpp=mpps[level],
        level_downsample=factors[level],
        openslide_downsample=float(slide.level_downsamples[level]),
        padded_levels=tuple(padded_levels(slide)),
        model_mpp=model_mpp,
        scale=model_mpp / mpps[level],
        cell_model=stride,
        patch=patch,
        cell0=cell0,
        rows=int(h0 // cell0),
        cols=int(w0 // cell0),
    )


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins): the cut maximising the between-class
    variance."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of uint8 RGB (H, W, 3), in [0, 1]; 0 for black."""
    x = rgb.astype(np.float32)
    hi, lo = x.max(-1), x.min(-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0.0)


def thumbnail(slide: Any, cell0: float = 0.0) -> tuple[np.ndarray, float]:
    """RGB thumbnail (transparent areas white) and its level-0 pixels per thumbnail pixel: at
    most THUMBNAIL_SIZE a side, and no finer than THUMBNAIL_PX_PER_CELL pixels per side of a
    `cell0`-pixel cell (a small slide's tissue map needs no full-resolution read)."""
    w0, h0 = slide.dimensions
    factor = max(max(w0, h0) / THUMBNAIL_SIZE, cell0 / THUMBNAIL_PX_PER_CELL)
    size = (max(1, round(w0 / max(factor, 1))), max(1, round(h0 / max(factor, 1))))
    import openslide

    try:
        if padded_levels(slide):
            thumb = _thumbnail_by_true_downsamples(slide, factor, size)
        else:
            thumb = slide.get_thumbnail(size).convert("RGB")
    except openslide.OpenSlideError as e:
        raise SlideError(
            f"{getattr(slide, '_filename', 'the slide')}: thumbnail unreadable ({e})"
        ) from None
    return np.asarray(thumb), w0 / thumb.size[0]


def padded_levels(slide: Any) -> list[int]:
    """The levels of `slide` stored padded to whole tiles (larger than their image at their true
    downsample, ``wsi.pyramid``)."""
    sizes = [(int(w), int(h)) for w, h in slide.level_dimensions]
    factors = slide_downsamples(slide)
    return [
        k
        for k, (size, d) in enumerate(zip(sizes, factors, strict=True))
        if level_extent(sizes[0], size, d) != size
    ]


def _thumbnail_by_true_downsamples(slide: Any, factor: float, size: tuple[int, int]) -> Any:
    """What OpenSlide's get_thumbnail does (the coarsest level at or finer than `factor`, read
    whole, transparency white, Lanczos to at most `size`), with the level's padding cropped off
    (get_thumbnail keeps it, so the tissue map would drift by the padding's share)."""
    sizes = [(int(w), int(h)) for w, h in slide.level_dimensions]
    factors = slide_downsamples(slide)
    level = max(
        (k for k, d in enumerate(factors) if d <= max(factor, 1.0)), key=factors.__getitem__
    )
    region = slide.read_region((0, 0), level, level_extent(sizes[0], sizes[level], factors[level]))
    thumb = Image.new("RGB", region.size, (255, 255, 255))
    thumb.paste(region, mask=region.split()[3])
    thumb.thumbnail(size, Image.Resampling.LANCZOS)
    return thumb


def tissue_fraction(
    geom: SlideGeometry, thumb: np.ndarray, per_px: float
) -> tuple[np.ndarray, float]:
    """(rows, cols) share of each cell's area that is tissue, and the saturation threshold."""
    sat = saturation(thumb)
    threshold = float(np.clip(otsu_threshold(sat.ravel()), *SATURATION_RANGE))
    mask = (sat >= threshold).astype(np.float64)
    # the mean of the mask over each cell's rectangle, from an integral image
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1))
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    ys = np.clip(np.round(np.arange(geom.rows + 1) * geom.cell0 / per_px), 0, mask.shape[0])
    xs = np.clip(np.round(np.arange(geom.cols + 1) * geom.cell0 / per_px), 0, mask.shape[1])
    ys, xs = ys.astype(int), xs.astype(int)
    y1, x1 = ys[:-1, None], xs[None, :-1]
    y2, x2 = np.maximum(ys[1:, None], y1 + 1), np.maximum(xs[None, 1:], x1 + 1)
    y2, x2 = np.minimum(y2, mask.shape[0]), np.minimum(x2, mask.shape[1])
    total = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    area = np.maximum((y2 - y1) * (x2 - x1), 1)
    return total / area, threshold


def _read_region(slide: Any, at: tuple[int, int], level: int, size: tuple[int, int]) -> Any:
    """OpenSlide's read_region, a damaged tile reported as a SlideError naming where it is."""
    import openslide

    try:
        return slide.read_region(at, level, size)
    except openslide.OpenSlideError as e:
        raise SlideError(
            f"{getattr(slide, '_filename', 'the slide')}: OpenSlide could not read the region at "
            f"level-0 ({at[0]}, {at[1]}), level {level}, {size[0]}x{size[1]} px ({e}); the file "
            "is damaged there: re-export or re-scan it"
        ) from None


def read_block(slide: Any, geom: SlideGeometry, row0: int, col0: int, n: int) -> np.ndarray:
    """uint8 RGB at model resolution of the n x n cells from (row0, col0) plus the window
    margin: (n * S + P - S) pixels a side; outside the slide and transparent pixels are white."""
    margin = (geom.patch - geom.cell_model) // 2
    side = n * geom.cell_model + 2 * margin
    # the block's top-left corner in model pixels, then in level-0 and level pixels
    mx, my = col0 * geom.cell_model - margin, row0 * geom.cell_model - margin
    f0 = geom.model_mpp / geom.mpp0  # level-0 px per model px
    x0, y0 = math.floor(mx * f0), math.floor(my * f0)
    read = math.ceil(side * geom.scale)
    at = openslide_location(x0, y0, geom.openslide_downsample, geom.level_downsample)
    region = _read_region(slide, at, geom.level, (read, read))
    rgb = Image.new("RGB", region.size, (255, 255, 255))
    rgb.paste(region, mask=region.split()[3])
    if read != side:  # to model resolution; the read's rounding-up is cropped off, not squeezed
        full = max(side, round(read / geom.scale))
        rgb = rgb.resize((full, full), Image.Resampling.BILINEAR).crop((0, 0, side, side))
    return np.asarray(rgb)


def tissue_blocks(tissue: np.ndarray, block: int = BLOCK) -> list[tuple[int, int, np.ndarray]]:
    """(row0, col0, cells (K, 2)) of every `block` x `block` block holding tissue cells.

    The blocks tile the cell grid centred on it: when the grid is not a whole number of blocks
    the first block starts half the shortfall before cell 0 (rounded down), so that, where the
    shortfall is even, a slide turned by 90 degrees is cut into the turned blocks (a dense
    pass's values depend on where a cell sits in its block)."""
    out = []
    rows, cols = tissue.shape
    first_row, first_col = -((-rows % block) // 2), -((-cols % block) // 2)
    for r0 in range(first_row, rows, block):
        for c0 in range(first_col, cols, block):
            rr, cc = np.nonzero(tissue[max(r0, 0) : r0 + block, max(c0, 0) : c0 + block])
            if len(rr):
                out.append((r0, c0, np.stack([rr + max(r0, 0), cc + max(c0, 0)], 1)))
    return out
