"""CAMELYON16 ground-truth mask TIFFs read to a boolean tumour mask at a chosen downsample.

A mask TIFF is pyramidal, as CAMELYON16 ships them (``Test_001_Mask.tif``): level 0 is the
slide's size, 255 tumour in CAMELYON16 (1 in others), 0 background; a level resampled by the
mask's writer may hold grey values at the lesions' edges. Which pixels are tumour: those equal
to ``tumour_value`` (255: the challenge script's rule, which measures distances to the 255
pixels), or with None any value > 0. ``read_mask_tiff(path, ds)`` returns the mask at
downsample ds in the layout of ``annotations.rasterise``: shape ``(ceil(h / ds), ceil(w / ds))``
for level-0 size (w, h), pixel (r, c) covering level-0 ``[c ds, (c + 1) ds) x [r ds, (r + 1) ds)``.

Which level: a level's downsample is its true factor (``wsi.pyramid.true_downsamples``: the
integer d when its size is the level-0 size divided by d, rounded either way, or that size
rounded up to whole tiles, as some scanners pad their levels); a padded level is read without
its padding. The level at ds is read as it is. When no level is at ds, the coarsest finer level
is read and reduced by "any": a mask pixel is tumour when any finer pixel whose centre falls in
it is (``reduce_any``).

Reading: with OpenSlide when it opens the file (a tiled TIFF), in strips of rows of at most
READ_PIXELS pixels when OpenSlide's downsample of the level is an integer (strip origins then
fall on level pixels; else in one read); otherwise with tifffile (a stripped TIFF; tifffile and,
for compressed files, imagecodecs must be installed). A file whose channels differ (colour) is
a slide, not a mask, and is refused. Errors: ``AnnotationError`` naming the file (and the
level) and what to do.

Imports: camelyon.annotations, wsi.pyramid, errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.camelyon.annotations import check_downsample, mask_shape
from pcam_jax.errors import AnnotationError
from pcam_jax.wsi.pyramid import level_extent, slide_downsamples, true_downsamples

# the most mask pixels read at once (one OpenSlide strip, 4 bytes each)
READ_PIXELS = 1 << 24


def reduce_any(
    block: np.ndarray, row0: int, level_ds: float, downsample: int, out: np.ndarray
) -> None:
    """ORs the rows [row0, row0 + len(block)) of a level at `level_ds` (<= `downsample`) into
    `out` (at `downsample`): each fine pixel goes to the pixel holding its centre."""
    scale = level_ds / downsample
    rows, cols = out.shape
    ci = np.minimum(((np.arange(block.shape[1]) + 0.5) * scale).astype(np.int64), cols - 1)
    ri = np.minimum(((np.arange(len(block)) + row0 + 0.5) * scale).astype(np.int64), rows - 1)
    cs = np.flatnonzero(np.r_[True, np.diff(ci) > 0])
    rs = np.flatnonzero(np.r_[True, np.diff(ri) > 0])
    pooled = np.logical_or.reduceat(np.logical_or.reduceat(block, cs, axis=1), rs, axis=0)
    out[np.ix_(ri[rs], ci[cs])] |= pooled


def _openslide_mask(path: Path) -> Any:
    try:
        import openslide
    except ImportError:  # pragma: no cover - a core dependency
        return None
    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return None
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideError:
        return None


def _tiff_levels(path: Path) -> Any:
    try:
        import tifffile
    except ImportError:
        raise AnnotationError(
            f"{path}: not a tiled TIFF OpenSlide reads, and tifffile is not installed to read "
            "it otherwise (pip install tifffile imagecodecs)"
        ) from None
    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises many kinds on a damaged file
        raise AnnotationError(f"{path}: not a readable TIFF ({e}); expected a mask TIFF") from None
    return tif


def _tiff_pyramid(tif: Any) -> list[Any]:
    """The levels of an open TIFF, level 0 first: tifffile's pyramid, or, where it finds only
    one level (it groups levels that are exact reductions; a level padded to whole tiles is not),
    level 0 and the reduced-resolution pages after it."""
    levels = list(tif.series[0].levels)
    if len(levels) == 1:
        levels += [p for p in tif.pages[1:] if getattr(p, "subfiletype", 0) & 1]
    return levels


def _tumour(grey: np.ndarray, tumour_value: int | None) -> np.ndarray:
    return grey > 0 if tumour_value is None else grey == tumour_value


def _tiff_level_array(level: Any, path: Path, k: int, tumour_value: int | None) -> np.ndarray:
    try:
        data = np.asarray(level.asarray())
    except Exception as e:
        raise AnnotationError(
            f"{path}: level {k} unreadable ({e}); install imagecodecs for its compression"
        ) from None
    axes = level.axes
    data = np.moveaxis(data, [axes.index("Y"), axes.index("X")], [0, 1])
    data = data.reshape(data.shape[0], data.shape[1], -1)
    _check_grey(data, path)
    return _tumour(data[..., 0], tumour_value)


def _check_grey(data: np.ndarray, path: Path) -> None:
    """AnnotationError when (H, W, C) `data` has colour: a slide given as a mask."""
    if data.shape[-1] > 1 and (data != data[..., :1]).any():
        raise AnnotationError(
            f"{path}: has colour (its channels differ), so it is a slide, not a ground-truth "
            "mask; give the mask (STEM_mask.tif, one grey channel) or the annotations instead"
        )


def _choose_level(factors: Sequence[float], downsample: int) -> tuple[int, float]:
    """The coarsest level at or finer than `downsample`, and its downsample."""
    best, best_ds = 0, 1.0
    for k, d in enumerate(factors):
        if best_ds < d <= downsample * (1 + 1e-9):
            best, best_ds = k, d
    return best, best_ds


def mask_tiff_size(path: str | Path) -> tuple[int, int]:
    """Level-0 (w, h) of a mask TIFF."""
    path = _existing(path)
    slide = _openslide_mask(path)
    if slide is not None:
        try:
            return tuple(slide.dimensions)  # type: ignore[return-value]
        finally:
            slide.close()
    with _tiff_levels(path) as tif:
        shape = tif.series[0].levels[0]
        return shape.shape[shape.axes.index("X")], shape.shape[shape.axes.index("Y")]


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file (expected a mask TIFF)")
    return path


def read_mask_tiff(
    path: str | Path, downsample: int, tumour_value: int | None = None
) -> np.ndarray:
    """Boolean tumour mask (ceil(h / ds), ceil(w / ds)) of a mask TIFF at `downsample` (tumour:
    the pixels equal to `tumour_value`, or above 0 with None); see the module docstring for the
    level read."""
    path, ds = _existing(path), check_downsample(downsample)
    slide = _openslide_mask(path)
    if slide is not None:
        try:
            return _read_openslide(slide, path, ds, tumour_value)
        finally:
            slide.close()
    with _tiff_levels(path) as tif:
        levels = _tiff_pyramid(tif)
        sizes = [(lv.shape[lv.axes.index("X")], lv.shape[lv.axes.index("Y")]) for lv in levels]
        tiles = [
            (lv.keyframe.tilewidth, lv.keyframe.tilelength) if lv.keyframe.is_tiled else None
            for lv in levels
        ]
        factors = true_downsamples(sizes, tiles, [sizes[0][0] / max(w, 1) for w, _ in sizes])
        k, level_ds = _choose_level(factors, ds)
        w, h = level_extent(sizes[0], sizes[k], level_ds)
        out = np.zeros(mask_shape(sizes[0], ds), bool)
        level = _tiff_level_array(levels[k], path, k, tumour_value)
        reduce_any(level[:h, :w], 0, level_ds, ds, out)
    return out


def _read_openslide(slide: Any, path: Path, ds: int, tumour_value: int | None) -> np.ndarray:
    """The mask at `ds` from an open OpenSlide: in strips of rows when OpenSlide's downsample of
    the level is an integer (strip origins then fall on level pixels), else in one read."""
    import openslide

    sizes = [(int(w), int(h)) for w, h in slide.level_dimensions]
    factors = slide_downsamples(slide)
    k, level_ds = _choose_level(factors, ds)
    w, h = level_extent(sizes[0], sizes[k], level_ds)  # a padded level without its padding
    os_ds = float(slide.level_downsamples[k])
    out = np.zeros(mask_shape(sizes[0], ds), bool)
    step = max(1, READ_PIXELS // max(w, 1)) if os_ds.is_integer() else h
    for row0 in range(0, h, step):
        n = min(step, h - row0)
        try:
            region = slide.read_region((0, int(row0 * os_ds)), k, (w, n))
        except openslide.OpenSlideError as e:
            raise AnnotationError(
                f"{path}: level {k} unreadable at row {row0} ({e}); the mask file is damaged"
            ) from None
        rgba = np.asarray(region)
        _check_grey(rgba[:, :, :3], path)
        reduce_any(_tumour(rgba[:, :, 0], tumour_value), row0, level_ds, ds, out)
    return out


__all__ = [
    "READ_PIXELS",
    "mask_tiff_size",
    "read_mask_tiff",
    "reduce_any",
]
