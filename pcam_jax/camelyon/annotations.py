"""Ground truth of tumour regions: CAMELYON16 ASAP XML and QuPath GeoJSON read to level-0
polygons (``Regions``), and polygons rasterised to a boolean mask at a chosen downsample (mask
TIFFs: ``camelyon.masks``).

Coordinates
-----------
Level-0 pixels of the slide, x to the right, y down, as floats; continuous, so that pixel
(row i, column j) covers ``[j, j + 1) x [i, i + 1)`` (OpenSlide's and QuPath's convention; an
ASAP vertex is read the same way). A mask at downsample ``ds`` has shape
``(ceil(h / ds), ceil(w / ds))`` for a level-0 size ``(w, h)``; its pixel (r, c) covers level-0
``[c ds, (c + 1) ds) x [r ds, (r + 1) ds)``.

Regions
-------
A ``Polygon`` is an exterior ring (K, 2) of (x, y) and its hole rings. ``Regions`` holds the
tumour polygons and the exclusion polygons; the tumour mask is the union of the tumour polygons
(each without its own holes) minus the union of the exclusion polygons. A hole cuts only its own
polygon, so a tumour island drawn inside another polygon's hole stays tumour (GeoJSON's meaning,
and what pcam-slide's tumour.geojson needs); an exclusion polygon cuts every tumour polygon
(ASAP's meaning).

``rasterise`` (the pixel-centre rule): a mask pixel is inside a polygon when its centre,
level-0 ``((c + 1/2) ds, (r + 1/2) ds)``, is inside by the even-odd rule over the polygon's
rings (a centre on a left edge is in, on a right edge out). Exact and unbiased, so the three
readers agree to the boundary pixel; PIL's ImageDraw fills about one boundary pixel too many
or too few (1-2 % of the area of a polygon 200 pixels across), which is why it is not used.

The readers
-----------
``read_asap_xml``: ``<ASAP_Annotations><Annotations><Annotation Type="Polygon"
PartOfGroup="_0"><Coordinates><Coordinate Order="0" X=".." Y=".."/>..``. Groups ``_0``, ``_1``,
``Tumor``, ``Tumour``, ``metastases`` are tumour; ``_2`` and ``Exclusion`` are exclusion;
``None`` (ungrouped) is tumour. Types Polygon, Spline (its control points) and Rectangle are
regions; Dot, PointSet, Measurement and Arrow are skipped. A decimal comma (``X="12,5"``, as
ASAP writes in some locales) is read as a point.

``read_qupath_geojson``: a FeatureCollection, a bare list of features (QuPath's "Export
objects"), one Feature or one geometry. Polygon and MultiPolygon geometries (and those inside a
GeometryCollection) are regions, their holes kept; points and lines are skipped. The class,
``properties.classification.name`` (or a plain string): Tumor, Tumour, Metastasis, Metastases
(any case) are tumour; **no classification is tumour** (an unclassified annotation in a
ground-truth file is taken to be what the file is about); Exclusion and Ignore* are exclusion;
any other class (Stroma, Normal, ...) is skipped. pcam-slide's tumour.geojson reads as tumour.

Mask TIFFs: ``camelyon.masks``.

Errors: ``AnnotationError`` naming the file (and the annotation, feature or level) and what was
expected, for a missing or malformed file, non-numeric coordinates, rings of fewer than three
points, unknown groups, or a file without tumour polygons.

Imports: errors.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.errors import AnnotationError

TUMOUR_GROUPS = frozenset({"_0", "_1", "tumor", "tumour", "metastases", "metastasis", "none"})
EXCLUSION_GROUPS = frozenset({"_2", "exclusion"})
ASAP_REGION_TYPES = frozenset({"polygon", "spline", "rectangle"})
ASAP_SKIPPED_TYPES = frozenset({"dot", "pointset", "measurement", "arrow"})
TUMOUR_CLASSES = frozenset({"tumor", "tumour", "metastasis", "metastases"})


@dataclass(frozen=True)
class Polygon:
    """An exterior ring (K, 2) float64 of level-0 (x, y) and its hole rings (each (K, 2))."""

    exterior: np.ndarray
    holes: tuple[np.ndarray, ...] = ()

    def rings(self) -> tuple[np.ndarray, ...]:
        return (self.exterior, *self.holes)


@dataclass(frozen=True)
class Regions:
    """Tumour and exclusion polygons of one slide, level-0 pixels; `source`: the file read."""

    tumour: tuple[Polygon, ...]
    exclusion: tuple[Polygon, ...] = ()
    source: str = ""
    skipped: int = field(default=0, compare=False)  # annotations that are not regions

    def extent(self) -> tuple[float, float]:
        """(max x, max y) over all vertices, level-0 pixels (0, 0 when empty)."""
        rings = [r for p in (*self.tumour, *self.exclusion) for r in p.rings()]
        if not rings:
            return 0.0, 0.0
        xy = np.concatenate(rings)
        return float(xy[:, 0].max()), float(xy[:, 1].max())


# --- common checks ---------------------------------------------------------------------------


def _number(value: Any, path: Path, where: str, name: str) -> float:
    """A finite float from an XML attribute (a decimal comma accepted) or a JSON number, else
    AnnotationError naming the element."""
    try:
        if isinstance(value, str):
            value = float(value.replace(",", ".") if value.count(",") == 1 else value)
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise AnnotationError(
            f"{path}: {where}: {name}={value!r} is not a number; expected level-0 pixel "
            'coordinates (e.g. X="1234.5")'
        ) from None
    return float(value)


def _ring(points: Sequence[tuple[float, float]], path: Path, where: str) -> np.ndarray:
    """(K, 2) float64, a repeated closing point dropped; at least three points."""
    ring = np.asarray(points, np.float64).reshape(-1, 2)
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        raise AnnotationError(
            f"{path}: {where}: {len(ring)} distinct point(s); a region needs at least 3 "
            "(redraw or delete it)"
        )
    return ring


def _read_text(path: str | Path, what: str) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file (expected {what})")
    try:
        return path, path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read it as text ({e}); expected {what}") from None


def _regions(
    path: Path, tumour: list[Polygon], exclusion: list[Polygon], skipped: int, found: str
) -> Regions:
    if not tumour:
        raise AnnotationError(
            f"{path}: no tumour polygons ({found}); expected at least one tumour region"
        )
    return Regions(tuple(tumour), tuple(exclusion), str(path), skipped)


# --- ASAP XML --------------------------------------------------------------------------------


def _asap_points(annotation: ET.Element, path: Path, where: str) -> np.ndarray:
    coords = annotation.findall("./Coordinates/Coordinate")
    points = []
    for k, c in enumerate(coords):
        at = f"{where}, Coordinate {k}"
        order = c.get("Order")
        rank = _number(order, path, at, "Order") if order is not None else float(k)
        points.append(
            (rank, _number(c.get("X"), path, at, "X"), _number(c.get("Y"), path, at, "Y"))
        )
    points.sort(key=lambda p: p[0])
    return _ring([(x, y) for _, x, y in points], path, where)


def read_asap_xml(path: str | Path) -> Regions:
    """The tumour and exclusion polygons of an ASAP XML file (CAMELYON16's annotations)."""
    path, text = _read_text(path, "an ASAP XML annotation file")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise AnnotationError(
            f"{path}: not well-formed XML ({e}); expected ASAP_Annotations"
        ) from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: root element <{root.tag}>; expected <ASAP_Annotations>")
    tumour: list[Polygon] = []
    exclusion: list[Polygon] = []
    skipped = 0
    annotations = root.findall("./Annotations/Annotation")
    for k, a in enumerate(annotations):
        where = f"Annotation {a.get('Name', k)!r}"
        kind = (a.get("Type") or "Polygon").lower()
        if kind in ASAP_SKIPPED_TYPES:
            skipped += 1
            continue
        if kind not in ASAP_REGION_TYPES:
            raise AnnotationError(
                f"{path}: {where}: Type={a.get('Type')!r}; expected Polygon, Spline or Rectangle"
            )
        group = (a.get("PartOfGroup") or "None").strip()
        polygon = Polygon(_asap_points(a, path, where))
        if group.lower() in TUMOUR_GROUPS:
            tumour.append(polygon)
        elif group.lower() in EXCLUSION_GROUPS:
            exclusion.append(polygon)
        else:
            raise AnnotationError(
                f"{path}: {where}: PartOfGroup={group!r} is not a known group; expected _0, _1, "
                "Tumor, metastases (tumour) or _2, Exclusion (exclusion): rename the group"
            )
    return _regions(path, tumour, exclusion, skipped, f"{len(annotations)} annotation(s)")


# --- GeoJSON ---------------------------------------------------------------------------------


def _features(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection" and isinstance(data.get("features"), list):
            return data["features"]
        if kind == "Feature":
            return [data]
        if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
            return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise AnnotationError(
        f"{path}: expected a GeoJSON FeatureCollection, a list of features or a Feature"
    )


def _class_name(feature: dict[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    c = props.get("classification")
    if isinstance(c, dict):
        c = c.get("name")
    return c.strip().lower() if isinstance(c, str) and c.strip() else None


def _geojson_polygons(geometry: Any, path: Path, where: str) -> Iterator[Polygon]:
    """The polygons of a geometry; points and lines give none."""
    if not isinstance(geometry, dict):
        return
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        for k, g in enumerate(geometry.get("geometries") or []):
            yield from _geojson_polygons(g, path, f"{where}, geometry {k}")
        return
    if kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        return
    if kind not in ("Polygon", "MultiPolygon"):
        raise AnnotationError(f"{path}: {where}: geometry type {kind!r}; expected a Polygon")
    coords = geometry.get("coordinates")
    polys = [coords] if kind == "Polygon" else coords
    if not isinstance(polys, list):
        raise AnnotationError(f"{path}: {where}: 'coordinates' is not a list of rings")
    for i, rings in enumerate(polys):
        at = where if kind == "Polygon" else f"{where}, polygon {i}"
        if not isinstance(rings, list) or not rings:
            raise AnnotationError(f"{path}: {at}: expected a list of rings [[x, y], ...]")
        parsed = [_geojson_ring(r, path, f"{at}, ring {j}") for j, r in enumerate(rings)]
        yield Polygon(parsed[0], tuple(parsed[1:]))


def _geojson_ring(ring: Any, path: Path, where: str) -> np.ndarray:
    points = []
    for k, p in enumerate(ring if isinstance(ring, list) else [ring]):
        if not isinstance(p, list | tuple) or len(p) < 2:
            raise AnnotationError(f"{path}: {where}, point {k}: {p!r}; expected [x, y]")
        at = f"{where}, point {k}"
        points.append((_number(p[0], path, at, "x"), _number(p[1], path, at, "y")))
    return _ring(points, path, where)


def read_qupath_geojson(path: str | Path) -> Regions:
    """The tumour and exclusion polygons of a GeoJSON file (QuPath's export, pcam-slide's
    tumour.geojson); see the module docstring for the classes."""
    path, text = _read_text(path, "a GeoJSON file of annotations")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e}); expected GeoJSON") from None
    features = _features(data, path)
    tumour: list[Polygon] = []
    exclusion: list[Polygon] = []
    skipped = 0
    for k, f in enumerate(features):
        if not isinstance(f, dict):
            raise AnnotationError(f"{path}: feature {k} is not a JSON object")
        where = f"feature {k}" + (f" (id {f['id']!r})" if "id" in f else "")
        polygons = list(_geojson_polygons(f.get("geometry"), path, where))
        name = _class_name(f)
        if not polygons:
            skipped += 1
        elif name is None or name in TUMOUR_CLASSES:
            tumour += polygons
        elif name == "exclusion" or name.startswith("ignore"):
            exclusion += polygons
        else:
            skipped += 1
    return _regions(path, tumour, exclusion, skipped, f"{len(features)} feature(s)")


def read_regions(path: str | Path) -> Regions:
    """ASAP XML (.xml) or GeoJSON (.geojson, .json), by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".xml":
        return read_asap_xml(path)
    if suffix in (".geojson", ".json"):
        return read_qupath_geojson(path)
    raise AnnotationError(f"{path}: unknown annotation format; expected .xml (ASAP) or .geojson")


# --- rasterising -----------------------------------------------------------------------------


def mask_shape(level0_size: tuple[int, int], downsample: int) -> tuple[int, int]:
    """(rows, cols) of a mask at `downsample` of a slide of level-0 size (w, h)."""
    w, h = level0_size
    return -(-int(h) // downsample), -(-int(w) // downsample)


def check_downsample(downsample: int) -> int:
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample {downsample}: expected an integer >= 1")
    return int(downsample)


def fill_polygon(mask: np.ndarray, rings: Sequence[np.ndarray], downsample: int) -> None:
    """Sets to True the pixels of `mask` (at `downsample`) whose centres lie inside `rings`
    (level-0 (K, 2) x, y; even-odd rule over all rings, so holes stay out)."""
    a = np.concatenate([np.asarray(r, np.float64) for r in rings])
    b = np.concatenate([np.roll(np.asarray(r, np.float64), -1, axis=0) for r in rings])
    keep = a[:, 1] != b[:, 1]  # horizontal edges cross no row centre
    x0, y0, x1, y1 = a[keep, 0], a[keep, 1], b[keep, 0], b[keep, 1]
    if not len(x0):
        return
    rows, cols = mask.shape
    ds = float(downsample)
    r_lo = max(0, math.ceil(min(y0.min(), y1.min()) / ds - 0.5))
    r_hi = min(rows, math.floor(max(y0.max(), y1.max()) / ds - 0.5) + 1)
    chunk = max(1, (1 << 22) // len(x0))
    for start in range(r_lo, r_hi, chunk):
        r = np.arange(start, min(r_hi, start + chunk))
        yc = ((r + 0.5) * ds)[:, None]
        cross = (y0 <= yc) != (y1 <= yc)
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.where(cross, x0 + (yc - y0) * (x1 - x0) / (y1 - y0), np.inf)
        x.sort(axis=1)
        pairs = int(cross.sum(1).max()) // 2
        if not pairs:
            continue
        left, right = x[:, 0 : 2 * pairs : 2], x[:, 1 : 2 * pairs : 2]
        valid = np.isfinite(right)
        # centre (c + 1/2) ds in [left, right)  <=>  ceil(left/ds - 1/2) <= c < ceil(right/ds - 1/2)
        c0 = np.clip(np.ceil(left[valid] / ds - 0.5), 0, cols).astype(np.int64)
        c1 = np.clip(np.ceil(right[valid] / ds - 0.5), 0, cols).astype(np.int64)
        ri = np.broadcast_to(np.arange(len(r))[:, None], valid.shape)[valid]
        diff = np.zeros((len(r), cols + 1), np.int32)
        np.add.at(diff, (ri, c0), 1)
        np.add.at(diff, (ri, c1), -1)
        mask[r] |= np.cumsum(diff, axis=1)[:, :cols] > 0


def rasterise(regions: Regions, level0_size: tuple[int, int], downsample: int) -> np.ndarray:
    """Boolean tumour mask (ceil(h / ds), ceil(w / ds)) of `regions` on a slide of level-0 size
    (w, h): tumour polygons filled, exclusion polygons cleared (the pixel-centre rule)."""
    ds = check_downsample(downsample)
    mask = np.zeros(mask_shape(level0_size, ds), bool)
    for polygon in regions.tumour:
        fill_polygon(mask, polygon.rings(), ds)
    if regions.exclusion:
        excluded = np.zeros_like(mask)
        for polygon in regions.exclusion:
            fill_polygon(excluded, polygon.rings(), ds)
        mask &= ~excluded
    return mask


__all__ = [
    "Polygon",
    "Regions",
    "check_downsample",
    "fill_polygon",
    "mask_shape",
    "rasterise",
    "read_asap_xml",
    "read_qupath_geojson",
    "read_regions",
]
