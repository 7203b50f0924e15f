"""Whole-slide inference: a map of p(tumour) over a slide from a PCam patch model.

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
on the slide's pixel grid reaches the model bit for bit.

Tissue. Otsu's threshold on the HSV saturation of a thumbnail (at most THUMBNAIL_SIZE pixels a
side, read from a low pyramid level), clipped to SATURATION_RANGE, separates stained tissue from
glass; a cell is predicted when at least ``tissue_threshold`` of its area is tissue. Background
is never read at full resolution; background cells hold NaN in the map and are absent from
tiles.csv.

Throughput and memory. Cells are read in blocks of BLOCK x BLOCK (one OpenSlide read_region of
the block plus its window margin), on threads, a bounded number ahead of the model; windows go
to the devices in batches (``LoadedModel.predict_batches``). Memory is bounded by the blocks in
flight and the cell map, whatever the slide's size.

Outputs (``run_slide``): tiles.csv, probabilities.npy, heatmap.png, tumour.geojson, summary.json
(see ``write_outputs``), written to a temporary folder beside DIR and renamed to DIR at the end.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pcam_jax import inference
from pcam_jax.data.fileio import atomic_dir, check_new_dir
from pcam_jax.errors import PcamError

THUMBNAIL_SIZE = 2048  # longest side of the tissue-detection image, in pixels
BLOCK = 8  # cells per side of one read
# Otsu's threshold is clipped to this range: below it lies glass with JPEG noise; above it,
# Otsu has split stained tissue itself (pale eosin from haematoxylin) when little glass shows
SATURATION_RANGE = (0.04, 0.10)


class SlideError(PcamError):
    """A slide, its resolution or an output folder that pcam-slide cannot use."""


@dataclass(frozen=True)
class SlideGeometry:
    """How the slide maps to model pixels and cells.

    mpp0: level-0 um/px; level, level_mpp, level_downsample: the level read; model_mpp: m;
    scale: level pixels per model pixel (m / level_mpp); cell_model: S (model px);
    cell0: c (level-0 px, a float); rows, cols: the cell grid over the slide.
    """

    mpp0: float
    level: int
    level_mpp: float
    level_downsample: float
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


def slide_mpp(slide: Any, path: str | Path, override: float | None) -> float:
    """Level-0 um/px: `override` when given, else the slide's openslide.mpp-x/-y (their mean)."""
    if override is not None:
        if not override > 0:
            raise SlideError(f"--mpp={override}: must be a positive number of um per pixel")
        return float(override)
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
    return (x + y) / 2


def slide_geometry(
    slide: Any, mpp0: float, model_mpp: float, stride: int, patch: int
) -> SlideGeometry:
    """The level nearest to `model_mpp` (log scale; the finer on a tie) and the cell grid."""
    if stride <= 0 or stride > patch or (patch - stride) % 2:
        raise SlideError(
            f"--stride={stride}: expected 1..{patch} with {patch} - stride even (the window must "
            "centre on its cell)"
        )
    mpps = [mpp0 * d for d in slide.level_downsamples]
    level = min(range(len(mpps)), key=lambda i: (abs(math.log(mpps[i] / model_mpp)), i))
    w0, h0 = slide.dimensions
    cell0 = stride * model_mpp / mpp0
    return SlideGeometry(
        mpp0=mpp0,
        level=level,
        level_mpp=mpps[level],
        level_downsample=float(slide.level_downsamples[level]),
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


def thumbnail(slide: Any) -> tuple[np.ndarray, float]:
    """RGB thumbnail (at most THUMBNAIL_SIZE a side; transparent areas white) and its
    level-0 pixels per thumbnail pixel."""
    w0, h0 = slide.dimensions
    factor = max(w0, h0) / THUMBNAIL_SIZE
    size = (max(1, round(w0 / max(factor, 1))), max(1, round(h0 / max(factor, 1))))
    thumb = slide.get_thumbnail(size).convert("RGB")
    return np.asarray(thumb), w0 / thumb.size[0]


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
    region = slide.read_region((x0, y0), geom.level, (read, read))
    rgb = Image.new("RGB", region.size, (255, 255, 255))
    rgb.paste(region, mask=region.split()[3])
    if read != side:  # to model resolution; the read's rounding-up is cropped off, not squeezed
        full = max(side, round(read / geom.scale))
        rgb = rgb.resize((full, full), Image.Resampling.BILINEAR).crop((0, 0, side, side))
    return np.asarray(rgb)


def block_windows(
    block: np.ndarray, cells: np.ndarray, row0: int, col0: int, geom: SlideGeometry
) -> np.ndarray:
    """The P x P windows (K, P, P, 3) centred on `cells` (K, 2) (rows, cols) of a block."""
    s, p = geom.cell_model, geom.patch
    out = np.empty((len(cells), p, p, 3), np.uint8)
    for k, (r, c) in enumerate(cells):
        y, x = (r - row0) * s, (c - col0) * s
        out[k] = block[y : y + p, x : x + p]
    return out


def tissue_blocks(tissue: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(row0, col0, cells (K, 2)) of every BLOCK x BLOCK block holding tissue cells."""
    out = []
    rows, cols = tissue.shape
    for r0 in range(0, rows, BLOCK):
        for c0 in range(0, cols, BLOCK):
            rr, cc = np.nonzero(tissue[r0 : r0 + BLOCK, c0 : c0 + BLOCK])
            if len(rr):
                out.append((r0, c0, np.stack([rr + r0, cc + c0], 1)))
    return out


def window_stream(
    slide: Any, geom: SlideGeometry, blocks: list[tuple[int, int, np.ndarray]], threads: int = 2
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(windows, cells) per block, in order; blocks are read on `threads` threads, at most
    2 x threads ahead of the consumer."""

    def load(item: tuple[int, int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        r0, c0, cells = item
        block = read_block(slide, geom, r0, c0, BLOCK)
        return block_windows(block, cells, r0, c0, geom), cells

    with ThreadPoolExecutor(max_workers=threads) as pool:
        queue: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
        items = iter(blocks)
        for item in items:
            queue.append(pool.submit(load, item))
            if len(queue) >= 2 * threads:
                break
        while queue:
            result = queue.popleft().result()
            nxt = next(items, None)
            if nxt is not None:
                queue.append(pool.submit(load, nxt))
            yield result


def rebatch(
    stream: Iterator[tuple[np.ndarray, np.ndarray]], size: int, cells_out: deque[np.ndarray]
) -> Iterator[np.ndarray]:
    """Windows regrouped into batches of `size` (the last may be smaller); each batch's cells
    are appended to `cells_out` as it is yielded."""
    images: list[np.ndarray] = []
    cells: list[np.ndarray] = []
    held = 0
    for w, c in stream:
        images.append(w)
        cells.append(c)
        held += len(w)
        while held >= size:
            x, y = np.concatenate(images), np.concatenate(cells)
            cells_out.append(y[:size])
            yield x[:size]
            images, cells, held = [x[size:]], [y[size:]], held - size
    if held:
        cells_out.append(np.concatenate(cells))
        yield np.concatenate(images)


@dataclass
class SlideResult:
    """The cell map (rows, cols) float32 (NaN: not tissue), the geometry and timings."""

    probabilities: np.ndarray
    geometry: SlideGeometry
    tissue_threshold: float
    saturation_threshold: float
    seconds: float
    thumbnail: np.ndarray
    thumbnail_per_px: float


def predict_slide(
    slide: Any,
    path: str | Path,
    model: inference.LoadedModel,
    *,
    mpp: float | None = None,
    stride: int = 32,
    tissue_threshold: float = 0.5,
    batch_size: int = 256,
    tta: bool = False,
    progress: bool = False,
) -> SlideResult:
    """The p(tumour) map of an open slide (see the module docstring)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    if not 0 < tissue_threshold <= 1:
        raise SlideError(f"--tissue_threshold={tissue_threshold}: expected a fraction in (0, 1]")
    mpp0 = slide_mpp(slide, path, mpp)
    geom = slide_geometry(slide, mpp0, model.mpp, stride, model.patch_size)
    if geom.rows == 0 or geom.cols == 0:
        raise SlideError(f"{path}: smaller than one {stride}-pixel cell at {model.mpp} um/px")
    thumb, per_px = thumbnail(slide)
    fraction, sat_threshold = tissue_fraction(geom, thumb, per_px)
    tissue = fraction >= tissue_threshold
    if not tissue.any():
        raise SlideError(
            f"{path}: no tissue found (no cell has {tissue_threshold:.0%} of its area above "
            f"saturation {sat_threshold:.2f}); lower --tissue_threshold if the stain is faint"
        )
    probs = np.full((geom.rows, geom.cols), np.nan, np.float32)
    blocks = tissue_blocks(tissue)
    cells_fifo: deque[np.ndarray] = deque()
    batches = rebatch(window_stream(slide, geom, blocks), batch_size, cells_fifo)
    with tqdm(total=int(tissue.sum()), unit="cell", disable=not progress, file=sys.stderr) as bar:
        for p in model.predict_batches(batches, batch_size=batch_size, tta=tta):
            cells = cells_fifo.popleft()
            probs[cells[:, 0], cells[:, 1]] = p
            bar.update(len(p))
    return SlideResult(
        probs, geom, tissue_threshold, sat_threshold, time.perf_counter() - t0, thumb, per_px
    )


# --- outputs -----------------------------------------------------------------------------------


def cell_polygons(mask: np.ndarray) -> list[list[list[tuple[int, int]]]]:
    """Polygons (exterior ring, then hole rings) of the 4-connected regions of a boolean cell
    mask, in cell-corner coordinates (x = column, y = row). Rings are closed; exteriors run
    clockwise and holes counter-clockwise on screen (y down), i.e. the GeoJSON right-hand rule
    in a y-up frame, which QuPath accepts either way."""
    rows, cols = mask.shape
    padded = np.zeros((rows + 2, cols + 2), bool)
    padded[1:-1, 1:-1] = mask
    # directed boundary edges with the region on the right (screen coordinates)
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(a: tuple[int, int], b: tuple[int, int]) -> None:
        edges.setdefault(a, []).append(b)

    ys, xs = np.nonzero(mask)
    for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
        py, px = y + 1, x + 1
        if not padded[py - 1, px]:
            add((x, y), (x + 1, y))  # top edge, left to right
        if not padded[py, px + 1]:
            add((x + 1, y), (x + 1, y + 1))  # right edge, downwards
        if not padded[py + 1, px]:
            add((x + 1, y + 1), (x, y + 1))  # bottom edge, right to left
        if not padded[py, px - 1]:
            add((x, y + 1), (x, y))  # left edge, upwards
    rings: list[list[tuple[int, int]]] = []
    while edges:
        start = next(iter(edges))
        ring = [start]
        prev, cur = start, edges[start].pop()
        if not edges[start]:
            del edges[start]
        while cur != start:
            ring.append(cur)
            options = edges[cur]
            if len(options) > 1:  # two regions touch at a corner: keep to the tightest turn
                dx, dy = cur[0] - prev[0], cur[1] - prev[1]
                right = (-dy, dx)
                options.sort(key=lambda o: (o[0] - cur[0], o[1] - cur[1]) != right)
            nxt = options.pop(0)
            if not options:
                del edges[cur]
            prev, cur = cur, nxt
        ring.append(start)
        rings.append(_drop_collinear(ring))
    exteriors = [r for r in rings if _signed_area(r) > 0]
    holes = [r for r in rings if _signed_area(r) < 0]
    polygons: list[list[list[tuple[int, int]]]] = [[r] for r in exteriors]
    for hole in holes:
        # the centre of the cell on the left of the hole's first edge lies in the hole
        (ax, ay), (bx, by) = hole[0], hole[1]
        dx, dy = np.sign(bx - ax), np.sign(by - ay)
        px, py = ax + 0.5 * dx + 0.5 * dy, ay + 0.5 * dy - 0.5 * dx
        for poly in sorted(polygons, key=lambda p: _signed_area(p[0])):
            if _inside(poly[0], px, py):
                poly.append(hole)
                break
    return polygons


def _drop_collinear(ring: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pts = ring[:-1]
    keep = []
    n = len(pts)
    for i in range(n):
        a, b, c = pts[i - 1], pts[i], pts[(i + 1) % n]
        if (b[0] - a[0]) * (c[1] - b[1]) - (b[1] - a[1]) * (c[0] - b[0]) != 0:
            keep.append(b)
    return [*keep, keep[0]]


def _signed_area(ring: list[tuple[int, int]]) -> float:
    """Shoelace area; positive for rings clockwise on screen (y down)."""
    return 0.5 * sum(
        x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring[:-1], ring[1:], strict=True)
    )


def _inside(ring: list[tuple[int, int]], px: float, py: float) -> bool:
    """Whether (px, py) is inside `ring` (even-odd rule)."""
    inside = False
    for (x1, y1), (x2, y2) in zip(ring[:-1], ring[1:], strict=True):
        if (y1 > py) != (y2 > py) and px < x1 + (py - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def tumour_geojson(result: SlideResult, threshold: float) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the regions with p(tumour) >= threshold, as QuPath
    annotations classified "Tumor", in level-0 pixel coordinates."""
    mask = np.nan_to_num(result.probabilities, nan=0.0) >= threshold
    c = result.geometry.cell0
    features = []
    for k, poly in enumerate(cell_polygons(mask)):
        rings = [[[round(x * c, 2), round(y * c, 2)] for x, y in ring] for ring in poly]
        cells = sum(_signed_area(r) for r in poly)  # holes count negative
        features.append(
            {
                "type": "Feature",
                "id": f"tumour-{k}",
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "name": f"p(tumour) >= {threshold}",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "measurements": {"area_mm2": cells * (c * result.geometry.mpp0 / 1000) ** 2},
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def slide_summary(
    result: SlideResult,
    path: str | Path,
    model: inference.LoadedModel,
    threshold: float,
    top_k: int,
) -> dict[str, Any]:
    """summary.json: slide scores, tumour area, cells, time and the geometry used."""
    g = result.geometry
    p = result.probabilities[np.isfinite(result.probabilities)]
    top = np.sort(p)[::-1][:top_k]
    cell_um = g.cell_model * g.model_mpp
    return {
        "slide": str(path),
        "score_max": float(p.max()),
        f"score_top{top_k}_mean": float(top.mean()),
        "top_k": top_k,
        "threshold": threshold,
        "tumour_cells": int((p >= threshold).sum()),
        "tumour_area_mm2": float((p >= threshold).sum() * (cell_um / 1000) ** 2),
        "tissue_cells": int(p.size),
        "grid_cells": int(result.probabilities.size),
        "seconds": result.seconds,
        "cells_per_second": p.size / result.seconds,
        "level": g.level,
        "level_mpp": g.level_mpp,
        "level0_mpp": g.mpp0,
        "model_mpp": g.model_mpp,
        "resample_factor": g.scale,
        "cell_size_model_px": g.cell_model,
        "cell_size_level0_px": g.cell0,
        "grid": [g.rows, g.cols],
        "tissue_threshold": result.tissue_threshold,
        "saturation_threshold": result.saturation_threshold,
        "model": model.info.get("model", {}).get("name"),
        "model_source": model.info.get("source", {}),
    }


def write_tiles_csv(path: Path, result: SlideResult) -> None:
    """tiles.csv: x, y, width, height (level-0 pixels, rounded) and p_tumour per tissue cell."""
    c = result.geometry.cell0
    rows, cols = np.nonzero(np.isfinite(result.probabilities))
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "width", "height", "p_tumour"])
        for r, col in zip(rows.tolist(), cols.tolist(), strict=True):
            x, y = round(col * c), round(r * c)
            size = round((col + 1) * c) - x
            w.writerow(
                [x, y, size, round((r + 1) * c) - y, repr(float(result.probabilities[r, col]))]
            )


def write_heatmap(path: Path, result: SlideResult, title: str) -> None:
    """heatmap.png: p(tumour) over the slide's thumbnail, with a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thumb = result.thumbnail
    g = result.geometry
    extent_w, extent_h = (
        g.cols * g.cell0 / result.thumbnail_per_px,
        g.rows * g.cell0 / result.thumbnail_per_px,
    )
    h, w = thumb.shape[:2]
    fig, ax = plt.subplots(figsize=(8, 8 * h / w + 0.6))
    ax.imshow(thumb, extent=(0, w, h, 0))
    masked = np.ma.masked_invalid(result.probabilities)
    im = ax.imshow(
        masked,
        cmap="inferno",
        vmin=0,
        vmax=1,
        alpha=0.6,
        extent=(0, extent_w, extent_h, 0),
        interpolation="nearest",
    )
    ax.set(xlim=(0, w), ylim=(h, 0), title=title)
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="p(tumour)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def prepare_out_dir(out: str | Path) -> Path:
    """Checks that DIR can be created (absent or empty, parent writable)."""
    return check_new_dir(out, SlideError)


def write_outputs(
    out: Path,
    result: SlideResult,
    path: str | Path,
    model: inference.LoadedModel,
    threshold: float,
    top_k: int,
) -> dict[str, Any]:
    """Writes the five outputs to a temporary folder beside `out` and renames it to `out`."""
    summary = slide_summary(result, path, model, threshold, top_k)
    with atomic_dir(out) as tmp:
        write_tiles_csv(tmp / "tiles.csv", result)
        np.save(tmp / "probabilities.npy", result.probabilities)
        write_heatmap(tmp / "heatmap.png", result, f"{Path(path).name}: p(tumour)")
        (tmp / "tumour.geojson").write_text(json.dumps(tumour_geojson(result, threshold)))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_slide(
    path: str | Path,
    out: str | Path,
    model: inference.LoadedModel,
    *,
    mpp: float | None = None,
    stride: int = 32,
    tissue_threshold: float = 0.5,
    threshold: float = 0.5,
    top_k: int = 10,
    batch_size: int = 256,
    tta: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """pcam-slide: predicts `path` and writes DIR `out`; returns summary.json's content."""
    out = prepare_out_dir(out)
    slide = open_slide(path)
    try:
        result = predict_slide(
            slide,
            path,
            model,
            mpp=mpp,
            stride=stride,
            tissue_threshold=tissue_threshold,
            batch_size=batch_size,
            tta=tta,
            progress=progress,
        )
    finally:
        slide.close()
    return write_outputs(out, result, path, model, threshold, top_k)
