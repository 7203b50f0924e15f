"""Ground truth written the ways CAMELYON16 and QuPath write it, for tests: ASAP XML, QuPath
GeoJSON and pyramidal mask TIFFs (tifffile, as tests/synthetic_slides.py writes slides), and a
level-0 mask computed independently of pcam_jax (matplotlib's point-in-polygon at pixel
centres).

A polygon here is (exterior (K, 2), [holes (K, 2)...]) in level-0 (x, y) pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import tifffile
from matplotlib.path import Path as MplPath

Polygon = tuple[np.ndarray, list[np.ndarray]]


def write_asap_xml(
    path: Path, tumour: list[np.ndarray], exclusion: list[np.ndarray] = (), groups: list[str] = ()
) -> Path:
    """An ASAP XML file: tumour rings in groups `groups` (default _0), exclusion rings in _2;
    coordinates listed in reverse document order with their Order attributes (the reader must
    sort them)."""
    parts = ['<?xml version="1.0"?>', "<ASAP_Annotations>", "\t<Annotations>"]
    rings = [(r, (groups[k] if k < len(groups) else "_0")) for k, r in enumerate(tumour)]
    rings += [(r, "_2") for r in exclusion]
    for k, (ring, group) in enumerate(rings):
        parts.append(
            f'\t\t<Annotation Name="Annotation {k}" Type="Polygon" '
            f'PartOfGroup={quoteattr(group)} Color="#F4FA58">'
        )
        parts.append("\t\t\t<Coordinates>")
        for order in reversed(range(len(ring))):
            x, y = (float(v) for v in ring[order])
            parts.append(f'\t\t\t\t<Coordinate Order="{order}" X="{x!r}" Y="{y!r}" />')
        parts += ["\t\t\t</Coordinates>", "\t\t</Annotation>"]
    parts += ["\t</Annotations>", "\t<AnnotationGroups />", "</ASAP_Annotations>"]
    path.write_text("\n".join(parts) + "\n")
    return path


def closed(ring: np.ndarray) -> list[list[float]]:
    """A GeoJSON ring: the points and the first one again."""
    pts = [[float(x), float(y)] for x, y in ring]
    return [*pts, pts[0]]


def feature(rings: list[np.ndarray], cls: str | None = "Tumor", multi: list | None = None) -> dict:
    """A QuPath-style annotation Feature: a Polygon of `rings` (or a MultiPolygon of `multi`, a
    list of ring lists), classified `cls` (None: unclassified)."""
    if multi is not None:
        geometry = {"type": "MultiPolygon", "coordinates": [[closed(r) for r in p] for p in multi]}
    else:
        geometry = {"type": "Polygon", "coordinates": [closed(r) for r in rings]}
    props: dict = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def write_geojson(path: Path, features: list[dict], bare_list: bool = False) -> Path:
    data = features if bare_list else {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(data))
    return path


def level0_mask(polygons: list[Polygon], size: tuple[int, int]) -> np.ndarray:
    """bool (h, w): pixels whose centres (x + 1/2, y + 1/2) lie in a polygon and not in its
    holes (matplotlib's point-in-polygon, independent of pcam_jax)."""
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    mask = np.zeros(h * w, bool)
    for exterior, holes in polygons:
        inside = MplPath(exterior).contains_points(centres)
        for hole in holes:
            inside &= ~MplPath(hole).contains_points(centres)
        mask |= inside
    return mask.reshape(h, w)


def write_mask_tiff(
    path: Path,
    mask0: np.ndarray,
    downsamples: tuple[int, ...] = (1, 4),
    value: int = 255,
    tiled: bool = True,
) -> Path:
    """A pyramidal mask TIFF of level-0 `mask0`: one page per downsample (each level samples
    the level-0 pixel at the centre of its block), uint8 `value` for tumour."""
    with tifffile.TiffWriter(path) as tif:
        for k, ds in enumerate(downsamples):
            level = mask0[ds // 2 :: ds, ds // 2 :: ds] if ds > 1 else mask0
            tif.write(
                level.astype(np.uint8) * np.uint8(value),
                tile=(256, 256) if tiled else None,
                photometric="minisblack",
                subfiletype=1 if k else 0,
            )
    return path
