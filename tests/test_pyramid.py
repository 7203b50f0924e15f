"""Pyramid levels padded to whole tiles (as CAMELYON16's Utrecht scanners store them): the true
downsample rule, and slides and masks read where their pixels are (``pcam_jax.wsi.pyramid``).

Every file here is written by tifffile; OpenSlide reads them as generic tiled TIFFs and reports
the padded levels' downsamples as size ratios (1.758, 3.516, ... instead of 2, 4, ...)."""

from __future__ import annotations

import dataclasses

import numpy as np
import openslide
import pytest

from pcam_jax.camelyon.masks import read_mask_tiff
from pcam_jax.camelyon.synthetic import write_mask_tiff, write_slide
from pcam_jax.wsi.pyramid import openslide_location, true_downsamples, unpadded_factor
from pcam_jax.wsi.slide import (
    padded_levels,
    read_block,
    slide_geometry,
    thumbnail,
    tissue_fraction,
)

T = (256, 256)
# a level-0 image of 1000 x 800 with a 64-pixel purple square at x 600-663, y 400-463
W0, H0 = 1000, 800
SQUARE = (600, 400, 64)


def test_the_true_downsample_rule():
    # the case: a 3000-pixel level 0, levels padded to 256-pixel tiles
    sizes = [(3000, 3000), (1536, 1536), (768, 768), (512, 512)]
    ratios = [3000 / w for w, _ in sizes]
    assert [round(r, 3) for r in ratios] == [1.0, 1.953, 3.906, 5.859]  # what OpenSlide says
    assert true_downsamples(sizes, [T] * 4, ratios) == [1.0, 2.0, 4.0, 8.0]
    # levels of one tile each: the order decides (16 then 32, not 16 twice)
    sizes = [(3000, 2000), (1536, 1024), (768, 512), (512, 256), (256, 256), (256, 256)]
    got = true_downsamples(sizes, [T] * 6, [3000 / w for w, _ in sizes])
    assert got == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    # unpadded levels, rounded either way, need no tiles
    assert true_downsamples([(1001, 801), (500, 401), (250, 200)], [None] * 3, [1, 2, 4]) == [
        1.0,
        2.0,
        4.0,
    ]
    assert unpadded_factor((1001, 801), (500, 401)) == 2
    # a level that is neither keeps the reader's ratio (negative control: no factor invented)
    assert true_downsamples([(3000, 3000), (1400, 1400)], [T, T], [1.0, 3000 / 1400]) == [
        1.0,
        3000 / 1400,
    ]
    # a stripped level (no tiles) is never taken as padded
    assert true_downsamples([(3000, 3000), (1536, 1536)], [T, None], [1.0, 1.953125])[1] == (
        1.953125
    )
    assert openslide_location(400, 800, 2.0, 2.0) == (400, 800)
    assert openslide_location(400, 800, 1.7578125, 2.0) == (352, 703)


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full((H0, W0, 3), 255, np.uint8)
    # faint texture so that a shifted read is not equal by accident
    image[:] = 235 + rng.integers(0, 20, (H0, W0, 1), dtype=np.uint8)
    x, y, s = SQUARE
    image[y : y + s, x : x + s] = (90, 40, 160)
    return image


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, openslide.OpenSlide]:
    """The same image as an unpadded and as a padded pyramid (levels 1, 2, 4, 8; 0.25 um/px)."""
    folder = tmp_path_factory.mktemp("pyramid")
    out = {}
    for name, padded in (("plain", False), ("padded", True)):
        path = write_slide(
            folder / f"{name}.tif", _image(), 0.25, "zlib", downsamples=(1, 2, 4, 8), padded=padded
        )
        out[name] = openslide.OpenSlide(str(path))
    yield out
    for s in out.values():
        s.close()


def _square_box(block: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the purple square's pixels in an RGB block."""
    purple = (block[..., 1] < 120) & (block[..., 2] > 120)
    ys, xs = np.nonzero(purple)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_a_padded_slide_is_read_where_its_pixels_are(slides):
    padded, plain = slides["padded"], slides["plain"]
    assert padded_levels(padded) == [1, 2, 3] and padded_levels(plain) == []
    assert padded.level_downsamples[2] == pytest.approx(3.515625)  # OpenSlide's ratio
    # model at 1.0 um/px: level 2 (4 x 0.25 um) is read, 1:1
    geom = slide_geometry(padded, 0.25, 1.0, 32, 96)
    assert (geom.level, geom.level_downsample, geom.scale) == (2, 4.0, 1.0)
    assert geom.openslide_downsample == pytest.approx(3.515625)
    # the 8 x 8 block from cell (0, 0): model pixels -32 .. 287; the square at level 0
    # (600, 400) + 64 is at model (150, 100) + 16, so in the block at (182, 132) + 16
    x, y, s = SQUARE
    want = (x // 4 + 32, y // 4 + 32, (x + s) // 4 + 31, (y + s) // 4 + 31)
    block = read_block(padded, geom, 0, 0, 8)
    got = _square_box(block)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1, (got, want)
    reference = read_block(plain, slide_geometry(plain, 0.25, 1.0, 32, 96), 0, 0, 8)
    assert _square_box(reference) == want
    assert np.abs(block.astype(int) - reference).mean() < 3
    # negative control: placed by OpenSlide's ratio (as before the fix), the square moves
    naive = dataclasses.replace(
        geom,
        level_downsample=geom.openslide_downsample,
        level_mpp=0.25 * geom.openslide_downsample,
        scale=1.0 / (0.25 * geom.openslide_downsample),
    )
    moved = _square_box(read_block(padded, naive, 0, 0, 8))
    assert max(abs(a - b) for a, b in zip(moved, want, strict=True)) > 8, moved


def test_a_padded_slide_has_the_tissue_map_of_the_unpadded_one(slides):
    maps = {}
    for name, slide in slides.items():
        geom = slide_geometry(slide, 0.25, 1.0, 32, 96)
        thumb, per_px = thumbnail(slide, geom.cell0)
        maps[name] = (thumb, per_px, tissue_fraction(geom, thumb, per_px)[0])
    (t1, p1, f1), (t2, p2, f2) = maps["plain"], maps["padded"]
    assert t1.shape == t2.shape and p1 == pytest.approx(p2)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(f1, f2)
    # the square (level 0 (600, 400) + 64, cells of 128 px) lies in cells (3, 4) and (3, 5)
    assert f1[3, 4] > 0.1 and f1[3, 5] > 0.1
    assert {tuple(c) for c in np.argwhere(f1 > 0)} <= {
        (r, c) for r in (2, 3, 4) for c in (3, 4, 5, 6)
    }


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_a_padded_mask_is_read_where_the_lesion_is(tmp_path, reader, monkeypatch):
    """The issue's case in small: a lesion on a level-8 mask whose level is padded from 225 to
    256 rows is read at its rows, at the level's own downsample and reduced to a coarser one."""
    if reader == "tifffile":  # the fallback for files OpenSlide does not open
        import pcam_jax.camelyon.masks as masks

        monkeypatch.setattr(masks, "_openslide_mask", lambda path: None)
    mask0 = np.zeros((1800, 1800), bool)
    mask0[1400:1700, 1100:1300] = True
    plain = write_mask_tiff(tmp_path / "plain.tif", mask0, (1, 2, 4, 8))
    padded = write_mask_tiff(tmp_path / "padded.tif", mask0, (1, 2, 4, 8), padded=True)
    with openslide.OpenSlide(str(padded)) as s:
        assert s.level_dimensions[3] == (256, 256)
        assert s.level_downsamples[3] == pytest.approx(7.03125)
    for ds in (8, 32):
        want = read_mask_tiff(plain, ds)
        got = read_mask_tiff(padded, ds)
        assert got.shape == want.shape == (-(-1800 // ds),) * 2
        np.testing.assert_array_equal(got, want)
    rows = np.flatnonzero(read_mask_tiff(padded, 8).any(1))
    assert (rows.min(), rows.max()) == (175, 211)  # level-0 rows 1400-1699 sampled at 8i + 4
