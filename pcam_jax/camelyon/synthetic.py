"""Synthetic CAMELYON16-style files for tests and benchmarks: whole-slide images made of REAL
PCam patches, their ground truth as CAMELYON16 and QuPath write it, and whole cohorts.

Slides: a mosaic of 96x96 patches from the subset's valid split (tumour patches inside a known
rectangle, normal ones around it) inside a white margin, written by tifffile as a tiled,
pyramidal TIFF (level 0 and a 4x-reduced level, 256-pixel tiles) with its resolution, which
OpenSlide reads as a generic tiled TIFF with openslide.mpp-x/y. Coordinates are level-0 (x, y)
pixels, as in the challenge.

Ground truth: ASAP XML, QuPath GeoJSON and pyramidal mask TIFFs, and a level-0 mask computed
independently of pcam_jax (matplotlib's point-in-polygon at pixel centres) to check the readers
against. A polygon here is (exterior (K, 2), [holes (K, 2)...]).

Writing needs tifffile and imagecodecs (``pip install '.[test]'``); nothing in the package
imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from matplotlib.path import Path as MplPath
from PIL import Image

GRID = 8  # patches per side of the mosaic
MARGIN = 96  # white border, a multiple of the 32-pixel cell
TUMOUR = (slice(2, 6), slice(3, 7))  # the tumour patches: rows 2-5, columns 3-6
TILE = 256  # tile side of the TIFFs written here


def real_patches(
    root: Path,
    grid: int = GRID,
    tumour: tuple[slice, slice] | None = TUMOUR,
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(GRID*GRID, 96, 96, 3) real valid patches laid out row by row, and their labels: tumour
    patches inside TUMOUR (None: none), normal ones elsewhere; each class's patches are taken
    in file order from number `offset` on."""
    labels = np.zeros((grid, grid), int)
    if tumour is not None:
        labels[tumour] = 1
    files = {y: sorted((root / "valid" / str(y)).iterdir()) for y in (0, 1)}
    taken = {0: offset, 1: offset}
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


def pad_to_tiles(level: np.ndarray, value: int, tile: int = TILE) -> np.ndarray:
    """`level` (H, W, ...) padded right and below with `value` to whole `tile`s, as some
    scanners (CAMELYON16's Utrecht ones among them) store their reduced levels."""
    h, w = level.shape[:2]
    pad = [(0, -h % tile), (0, -w % tile)] + [(0, 0)] * (level.ndim - 2)
    return np.pad(level, pad, constant_values=value)


def write_slide(
    path: Path,
    image: np.ndarray,
    mpp: float | None,
    compression: str | None = None,
    downsamples: tuple[int, ...] = (1, 4),
    padded: bool = False,
) -> Path:
    """A tiled pyramidal TIFF: level 0 and a level per further downsample (Pillow's box
    reduction), TILE-pixel tiles; `padded`: the reduced levels padded white to whole tiles."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for level, ds in enumerate(downsamples):
            extra = {}
            if mpp is not None:
                res = 1e4 / (mpp * ds)
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            reduced = np.asarray(
                Image.fromarray(image).reduce(ds) if ds > 1 else Image.fromarray(image)
            )
            if padded and ds > 1:
                reduced = pad_to_tiles(reduced, 255)
            tif.write(
                reduced,
                tile=(TILE, TILE),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if level else 0,
                **extra,
            )
    return path


def tumour_polygon(tumour: tuple[slice, slice] = TUMOUR) -> list[tuple[float, float]]:
    """The level-0 corners (x, y) of a mosaic's tumour rectangle (patch rows x columns)."""
    (r0, r1), (c0, c1) = (tumour[0].start, tumour[0].stop), (tumour[1].start, tumour[1].stop)
    x0, x1 = MARGIN + c0 * 96, MARGIN + c1 * 96
    y0, y1 = MARGIN + r0 * 96, MARGIN + r1 * 96
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def write_cohort(
    subset_root: Path,
    folder: Path,
    *,
    tumour: int = 3,
    normal: int = 3,
    annotations: Path | None = None,
) -> dict[str, list[Path]]:
    """A synthetic CAMELYON16-like cohort in `folder`: `tumour` slides tumour_00N.tif (REAL
    tumour patches in TUMOUR) with ASAP XML ground truth in folder/annotations/, `normal`
    slides normal_00N.tif of normal patches only (each slide its own patches; 0.972 um/px,
    JPEG tiles), one broken file and one tumour slide without a resolution. Returns the paths by
    kind: "tumour", "normal", "broken", "no_mpp", "annotations" (in `annotations`, by default
    folder/annotations)."""
    notes = annotations or folder / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {
        k: [] for k in ("tumour", "normal", "broken", "no_mpp", "annotations")
    }
    for k in range(tumour):
        images, _ = real_patches(subset_root, offset=64 * k)
        out["tumour"].append(
            write_slide(folder / f"tumour_{k + 1:03d}.tif", mosaic(images), 0.972, "jpeg")
        )
        xml = notes / f"tumour_{k + 1:03d}.xml"
        out["annotations"].append(write_asap_xml(xml, [np.asarray(tumour_polygon())]))
    for k in range(normal):
        images, _ = real_patches(subset_root, tumour=None, offset=64 * (tumour + k))
        out["normal"].append(
            write_slide(folder / f"normal_{k + 1:03d}.tif", mosaic(images), 0.972, "jpeg")
        )
    broken = folder / "broken_001.tif"
    broken.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    out["broken"].append(broken)
    images, _ = real_patches(subset_root, offset=64 * (tumour + normal))
    out["no_mpp"].append(write_slide(folder / "nompp_001.tif", mosaic(images), None, "jpeg"))
    out["annotations"].append(
        write_asap_xml(notes / "nompp_001.xml", [np.asarray(tumour_polygon())])
    )
    return out


# --- ground truth ------------------------------------------------------------------------

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
    padded: bool = False,
) -> Path:
    """A pyramidal mask TIFF of level-0 `mask0`: one page per downsample (each level samples
    the level-0 pixel at the centre of its block), uint8 `value` for tumour; `padded`: the
    reduced levels padded with 0 to whole tiles (tiled only)."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        for k, ds in enumerate(downsamples):
            level = mask0[ds // 2 :: ds, ds // 2 :: ds] if ds > 1 else mask0
            level = level.astype(np.uint8) * np.uint8(value)
            if padded and ds > 1:
                level = pad_to_tiles(level, 0)
            tif.write(
                level,
                tile=(TILE, TILE) if tiled else None,
                photometric="minisblack",
                subfiletype=1 if k else 0,
            )
    return path
