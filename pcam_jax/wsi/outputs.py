"""pcam-slide's outputs: from a slide's cell map to the files a pathologist opens.

``write_outputs`` writes a slide folder (its files are named in ``wsi.layout``) to a temporary
folder beside it and renames it into place only when all are done
(``runtime.files.atomic_dir``): tiles.csv, probabilities.npy, heatmap.png, tumour.geojson
(the cells at or above the threshold as polygons in level-0 pixels, a FeatureCollection QuPath
imports, holes kept, collinear points dropped), detections.csv (``wsi.detections``) and
summary.json (slide, model, mode, geometry, tissue, timings, the slide scores (max, top-k mean,
tumour area in mm^2), the detection settings and what it was computed from (``input`` and
``mpp_given``: ``wsi.provenance``)).
Imports: wsi.layout, wsi.detections, wsi.slide, infer.predict, runtime, errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.errors import SlideError
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.files import atomic_dir, check_new_dir, write_csv, write_json
from pcam_jax.runtime.plotting import pyplot, save_figure
from pcam_jax.wsi import layout
from pcam_jax.wsi.detections import (
    detections_level0,
    non_maximum_suppression,
    write_detections_csv,
)
from pcam_jax.wsi.slide import SlideGeometry


@dataclass
class SlideResult:
    """The cell map (rows, cols) float32 (NaN: not tissue), the geometry, the mode that
    predicted it and the timings."""

    probabilities: np.ndarray
    geometry: SlideGeometry
    tissue_threshold: float
    saturation_threshold: float
    seconds: float
    thumbnail: np.ndarray
    thumbnail_per_px: float
    mode: str = "windows"  # the predictor that made the map: "windows" or "dense"


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
    model: LoadedModel,
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
        "level_downsample": g.level_downsample,
        # OpenSlide's size ratio; differs from level_downsample on a level padded to whole tiles
        "openslide_level_downsample": g.openslide_downsample,
        "padded_levels": list(g.padded_levels),
        "level0_mpp": g.mpp0,
        "model_mpp": g.model_mpp,
        "resample_factor": g.scale,
        "cell_size_model_px": g.cell_model,
        "cell_size_level0_px": g.cell0,
        "grid": [g.rows, g.cols],
        "tissue_threshold": result.tissue_threshold,
        "saturation_threshold": result.saturation_threshold,
        "mode": result.mode,
        "model": model.info.get("model", {}).get("name"),
        "model_source": model.info.get("source", {}),
    }


def write_tiles_csv(path: Path, result: SlideResult) -> None:
    """tiles.csv: x, y, width, height (level-0 pixels, rounded) and p_tumour per tissue cell."""
    c = result.geometry.cell0
    rows, cols = np.nonzero(np.isfinite(result.probabilities))
    table = []
    for r, col in zip(rows.tolist(), cols.tolist(), strict=True):
        x, y = round(col * c), round(r * c)
        size = round((col + 1) * c) - x
        table.append(
            [x, y, size, round((r + 1) * c) - y, repr(float(result.probabilities[r, col]))]
        )
    write_csv(path, ["x", "y", "width", "height", "p_tumour"], table)


def write_heatmap(path: Path, result: SlideResult, title: str) -> None:
    """heatmap.png: p(tumour) over the slide's thumbnail, with a colour bar."""
    plt = pyplot()

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
    save_figure(fig, path, dpi=110)


def prepare_out_dir(out: str | Path) -> Path:
    """Checks that DIR can be created (absent or empty, parent writable)."""
    return check_new_dir(out, SlideError)


def write_outputs(
    out: Path,
    result: SlideResult,
    path: str | Path,
    model: LoadedModel,
    *,
    threshold: float,
    top_k: int,
    nms_floor: float,
    nms_radius_um: float,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Writes the slide folder's six files to a temporary folder beside `out` and renames it
    to `out`; returns summary.json's content (with `provenance`: what it was computed from,
    ``wsi.provenance``)."""
    summary = {**slide_summary(result, path, model, threshold, top_k), **provenance}
    g = result.geometry
    maxima = non_maximum_suppression(
        result.probabilities, g.cell_model * g.model_mpp, floor=nms_floor, radius_um=nms_radius_um
    )
    detections = detections_level0(maxima, g.cell0)
    summary.update(detections=len(detections), nms_floor=nms_floor, nms_radius_um=nms_radius_um)
    with atomic_dir(out) as tmp:
        write_tiles_csv(tmp / layout.TILES_CSV, result)
        np.save(tmp / layout.PROBABILITIES_NPY, result.probabilities)
        write_heatmap(tmp / layout.HEATMAP_PNG, result, f"{Path(path).name}: p(tumour)")
        geojson = tumour_geojson(result, threshold)
        (tmp / layout.TUMOUR_GEOJSON).write_text(json.dumps(geojson))
        write_detections_csv(tmp / layout.DETECTIONS_CSV, detections)
        write_json(tmp / layout.SUMMARY_JSON, summary)
    return summary
