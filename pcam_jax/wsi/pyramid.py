"""Pyramid levels by their true downsample, for slides and masks alike.

Layout. A pyramidal file stores level k as level 0 reduced by an integer factor d_k (2^k for
most scanners): ``ceil(w0 / d_k)`` by ``ceil(h0 / d_k)`` pixels (or rounded down) for a level-0
size (w0, h0). Some scanners (those of CAMELYON16's Utrecht slides among them) pad every
reduced level to whole tiles: level k is then stored ``ceil(ceil(w0 / d_k) / T) * T`` pixels
wide for tiles T pixels wide (and likewise high), the image at its top left and padding to the
right and below. OpenSlide's generic-TIFF reader takes a level's downsample to be the ratio of
the sizes, ``(w0 / w_k + h0 / h_k) / 2``, which padding makes smaller than d_k (a 3000-pixel
level 0 with 256-pixel tiles reads as 1.953, 3.906, 5.859 instead of 2, 4, 8), and it places
level-0 coordinates on the level by that ratio, so a region it returns is not where it says.

Rule (``true_downsamples``). Level 0's factor is 1. Level k's is the integer d when its size is
level 0's divided by d, rounded either way (no padding); else the integer d whose size rounded
up to whole tiles is the level's size (padding): the smallest such d above level k-1's factor,
powers of two first (a level smaller than one tile fits many; the order of the levels decides).
A level that fits neither keeps OpenSlide's ratio. The factors are exact: no floating error.

Reading (``openslide_location``). A level-0 point x lies at x / d_k on level k; OpenSlide reads
from x' / r_k with r_k its ratio, so the level-0 location to give it is x' = x * r_k / d_k,
rounded (off by at most half a level-0 pixel, a fraction of a level pixel). On a level without
padding r_k = d_k and x' = x. A whole level (a thumbnail, a mask) is read from (0, 0), where
both agree, and cropped to its image without the padding (``level_extent``).

Imports: nothing from pcam_jax.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Size = tuple[int, int]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def unpadded_factor(size0: Size, size: Size) -> int | None:
    """d when a level of `size` (w, h) is level 0's `size0` divided by the integer d and rounded
    either way, else None."""
    (w0, h0), (w, h) = size0, size
    if w < 1 or h < 1:
        return None
    d = max(1, round(w0 / w))
    if w in (w0 // d, _ceil_div(w0, d)) and h in (h0 // d, _ceil_div(h0, d)):
        return d
    return None


def _padded_fits(size0: Size, size: Size, tile: Size, d: int) -> bool:
    (w0, h0), (w, h), (tw, th) = size0, size, tile
    return _ceil_div(_ceil_div(w0, d), tw) * tw == w and _ceil_div(_ceil_div(h0, d), th) * th == h


def padded_factor(size0: Size, size: Size, tile: Size, above: int) -> int | None:
    """The smallest integer d > `above` (powers of two first) for which level 0's size
    divided by d and rounded up to whole `tile`s (w, h) is `size`, else None."""
    (w0, h0), (w, h), (tw, th) = size0, size, tile
    if tw < 1 or th < 1 or w % tw or h % th:
        return None
    d = 1
    while d <= max(w0, h0):
        if d > above and _padded_fits(size0, size, tile, d):
            return d
        d *= 2
    # any integer: the level holds ceil(w0 / d) > w - tw pixels, so d < w0 / (w - tw)
    lo = max(above + 1, _ceil_div(w0, w), _ceil_div(h0, h))
    hi = min(max(w0, h0), lo + 4096)
    for d in range(lo, hi + 1):
        if _padded_fits(size0, size, tile, d):
            return d
    return None


def true_downsamples(
    sizes: Sequence[Size], tiles: Sequence[Size | None], reported: Sequence[float]
) -> list[float]:
    """Each level's factor by the rule above: sizes (w, h) per level (level 0 first), their
    tiles (w, h) (None for a stripped level) and the reader's ratios (OpenSlide's
    level_downsamples), kept for a level that fits neither form."""
    out: list[float] = [1.0]
    for k in range(1, len(sizes)):
        d: float | None = unpadded_factor(sizes[0], sizes[k])
        if d is None and tiles[k] is not None:
            d = padded_factor(sizes[0], sizes[k], tiles[k], int(out[-1]))
        out.append(float(d) if d is not None else float(reported[k]))
    return out


def level_extent(size0: Size, size: Size, factor: float) -> Size:
    """(w, h) of a level's image without its padding: level 0's size divided by the factor and
    rounded up, never beyond the stored `size`."""
    (w0, h0), (w, h) = size0, size
    if not float(factor).is_integer():
        return w, h
    d = int(factor)
    return min(w, _ceil_div(w0, d)), min(h, _ceil_div(h0, d))


def openslide_tiles(slide: Any) -> list[Size | None]:
    """Tile (w, h) of each level of an OpenSlide slide (openslide.level[k].tile-width/-height),
    None where the slide does not say."""
    props = slide.properties
    out: list[Size | None] = []
    for k in range(slide.level_count):
        try:
            out.append(
                (
                    int(props[f"openslide.level[{k}].tile-width"]),
                    int(props[f"openslide.level[{k}].tile-height"]),
                )
            )
        except (KeyError, ValueError):
            out.append(None)
    return out


def slide_downsamples(slide: Any) -> list[float]:
    """The true factor of each level of an OpenSlide slide (see the module docstring)."""
    sizes = [(int(w), int(h)) for w, h in slide.level_dimensions]
    return true_downsamples(sizes, openslide_tiles(slide), list(slide.level_downsamples))


def openslide_location(x0: int, y0: int, reported: float, factor: float) -> tuple[int, int]:
    """The level-0 location to give OpenSlide's read_region on a level of true `factor` and
    OpenSlide ratio `reported` so that it reads from level-0 point (x0, y0)."""
    if reported == factor:
        return x0, y0
    scale = reported / factor
    return round(x0 * scale), round(y0 * scale)


__all__ = [
    "level_extent",
    "openslide_location",
    "openslide_tiles",
    "padded_factor",
    "slide_downsamples",
    "true_downsamples",
    "unpadded_factor",
]
