"""pcam-slide's run on one slide: settings, preparation, prediction, outputs.

``run_slide(path, out, model, settings)`` is pcam-slide's library function; a cohort
(``wsi.cohort``) calls its two halves, ``SlideSettings.prepare`` (open the slide, fix its
geometry, find its tissue: ``wsi.slide``) on a second thread while the previous slide is
predicted, then ``predict_and_write``. Prediction goes block by block through the predictor of
``settings.mode`` (``wsi.predictors``: ``auto``, the default, ``windows`` or ``dense``) into a
cell map, which ``wsi.outputs`` writes. Memory is bounded by the blocks in flight and the cell
map, whatever the slide's size.

summary.json's ``seconds`` is preparation plus prediction (not the outputs), and
``cells_per_second`` divides the tissue cells by it; ``bench/slide_speed.py`` splits the time
into reading, model and outputs.
Imports: wsi.slide, wsi.predictors, wsi.outputs, wsi.provenance, infer.predict, runtime, errors.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.errors import SlideError
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.stopping import raise_if_stopped
from pcam_jax.wsi import outputs
from pcam_jax.wsi.detections import NMS_FLOOR, NMS_RADIUS_UM
from pcam_jax.wsi.outputs import SlideResult
from pcam_jax.wsi.predictors import MODES, block_stream, choose_predictor
from pcam_jax.wsi.provenance import slide_identity
from pcam_jax.wsi.slide import (
    SlideGeometry,
    open_slide,
    slide_geometry,
    slide_mpp,
    thumbnail,
    tissue_blocks,
    tissue_fraction,
)


@dataclass
class PreparedSlide:
    """An open slide with its geometry and tissue map: all that precedes reading its cells.
    ``seconds`` is the time the preparation took; ``close()`` closes the slide (once, however
    often it is called)."""

    slide: Any
    path: str | Path
    geometry: SlideGeometry
    tissue: np.ndarray  # bool (rows, cols): the cells to predict
    tissue_threshold: float
    saturation_threshold: float
    thumbnail: np.ndarray
    thumbnail_per_px: float
    seconds: float
    identity: dict[str, Any]  # the file read (``provenance.slide_identity``)
    mpp_given: float | None  # the resolution given for it (None: the slide's own)
    closed: bool = field(default=False, init=False)  # set by close()

    def close(self) -> None:
        """Closes the slide (again: nothing)."""
        if not self.closed:
            self.closed = True
            self.slide.close()

    def provenance(self) -> dict[str, Any]:
        """What its slide folder records it was computed from (``wsi.provenance``)."""
        return {"input": self.identity, "mpp_given": self.mpp_given}


def prepare_slide(
    path: str | Path,
    model: LoadedModel,
    *,
    mpp: float | None = None,
    stride: int = 32,
    tissue_threshold: float = 0.5,
) -> PreparedSlide:
    """Opens `path`, fixes its resolution and cell grid and finds its tissue (the thumbnail
    and Otsu's threshold); SlideError when it cannot be read, has no MPP (and no `mpp`) or no
    tissue. A pcam-slide cohort prepares the next slide while the current one is predicted."""
    t0 = time.perf_counter()
    if not 0 < tissue_threshold <= 1:
        raise SlideError(f"--tissue_threshold={tissue_threshold}: expected a fraction in (0, 1]")
    slide = open_slide(path)
    try:
        try:
            identity = slide_identity(path)
        except OSError as e:
            raise SlideError(f"{path}: cannot read the slide file ({e})") from None
        mpp0 = slide_mpp(slide, path, mpp)
        geom = slide_geometry(slide, mpp0, model.mpp, stride, model.patch_size)
        if geom.rows == 0 or geom.cols == 0:
            raise SlideError(f"{path}: smaller than one {stride}-pixel cell at {model.mpp} um/px")
        thumb, per_px = thumbnail(slide, geom.cell0)
        fraction, sat_threshold = tissue_fraction(geom, thumb, per_px)
        tissue = fraction >= tissue_threshold
        if not tissue.any():
            raise SlideError(
                f"{path}: no tissue found (no cell has {tissue_threshold:.0%} of its area above "
                f"saturation {sat_threshold:.2f}); lower --tissue_threshold if the stain is faint"
            )
    except BaseException:
        slide.close()
        raise
    return PreparedSlide(
        slide,
        path,
        geom,
        tissue,
        tissue_threshold,
        sat_threshold,
        thumb,
        per_px,
        time.perf_counter() - t0,
        identity,
        mpp,
    )


def predict_prepared(
    prepared: PreparedSlide,
    model: LoadedModel,
    *,
    mode: str = "auto",
    batch_size: int = 256,
    tta: bool = False,
    progress: bool = False,
) -> SlideResult:
    """The p(tumour) map of a prepared slide (the slide stays open; the caller closes it)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    geom, tissue = prepared.geometry, prepared.tissue
    predictor = choose_predictor(model, mode, geom.cell_model, batch_size, tta)
    probs = np.full((geom.rows, geom.cols), np.nan, np.float32)
    with tqdm(
        total=int(tissue.sum()), unit="cell", disable=not progress, file=sys.stderr, leave=False
    ) as bar:
        blocks = tissue_blocks(tissue, predictor.block)
        # closed here, whatever ends the loop (Ctrl-C included): its reader threads finish their
        # reads before the caller closes the slide (OpenSlide aborts the process otherwise)
        with contextlib.closing(
            block_stream(prepared.slide, geom, blocks, predictor.block)
        ) as stream:
            for cells, p in predictor.predict(stream, geom):
                raise_if_stopped()  # a Ctrl-C whose first raise was dropped (runtime.stopping)
                probs[cells[:, 0], cells[:, 1]] = p
                bar.update(len(p))
    return SlideResult(
        probs,
        geom,
        prepared.tissue_threshold,
        prepared.saturation_threshold,
        prepared.seconds + time.perf_counter() - t0,
        prepared.thumbnail,
        prepared.thumbnail_per_px,
        predictor.mode,
    )


def predict_slide(
    path: str | Path,
    model: LoadedModel,
    settings: SlideSettings | None = None,
    *,
    progress: bool = False,
) -> SlideResult:
    """The p(tumour) map of the slide at `path` with `settings` (see the module docstring)."""
    settings = settings or SlideSettings()
    prepared = settings.prepare(path, model)
    try:
        return settings.predict(prepared, model, progress)
    finally:
        prepared.close()


@dataclass(frozen=True)
class SlideSettings:
    """pcam-slide's settings (its flags), shared by every slide of a run."""

    mpp: float | None = None
    stride: int = 32
    tissue_threshold: float = 0.5
    threshold: float = 0.5
    top_k: int = 10
    batch_size: int = 256
    tta: bool = False
    nms_floor: float = NMS_FLOOR
    nms_radius_um: float = NMS_RADIUS_UM
    mode: str = "auto"

    def check(self) -> None:
        """Raises SlideError naming the first setting out of range (what the flags check)."""
        for name in ("tissue_threshold", "threshold", "nms_floor"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SlideError(f"--{name}={value}: expected a probability in [0, 1]")
        if self.top_k < 1:
            raise SlideError(f"--top_k={self.top_k}: expected at least 1 cell")
        if not self.nms_radius_um >= 0:
            raise SlideError(f"--nms_radius_um={self.nms_radius_um}: expected >= 0 microns")
        if self.mode not in MODES:
            raise SlideError(f"--mode={self.mode}: expected one of {', '.join(MODES)}")

    def prepare(self, path: str | Path, model: LoadedModel) -> PreparedSlide:
        """``prepare_slide`` of `path` with these settings."""
        return prepare_slide(
            path,
            model,
            mpp=self.mpp,
            stride=self.stride,
            tissue_threshold=self.tissue_threshold,
        )

    def predict(
        self, prepared: PreparedSlide, model: LoadedModel, progress: bool = False
    ) -> SlideResult:
        """``predict_prepared`` with these settings."""
        return predict_prepared(
            prepared,
            model,
            mode=self.mode,
            batch_size=self.batch_size,
            tta=self.tta,
            progress=progress,
        )


def predict_and_write(
    prepared: PreparedSlide,
    out: str | Path,
    model: LoadedModel,
    settings: SlideSettings,
    progress: bool = False,
) -> dict[str, Any]:
    """Predicts a prepared slide and writes the slide folder `out`; returns summary.json's
    content. The slide is closed either way."""
    try:
        result = settings.predict(prepared, model, progress)
    finally:
        prepared.close()
    return outputs.write_outputs(
        Path(out),
        result,
        prepared.path,
        model,
        threshold=settings.threshold,
        top_k=settings.top_k,
        nms_floor=settings.nms_floor,
        nms_radius_um=settings.nms_radius_um,
        provenance=prepared.provenance(),
    )


def run_slide(
    path: str | Path,
    out: str | Path,
    model: LoadedModel,
    settings: SlideSettings | None = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """pcam-slide on one slide: predicts `path` and writes the slide folder `out` (new or
    empty); returns summary.json's content."""
    settings = settings or SlideSettings()
    settings.check()
    out = outputs.prepare_out_dir(out)
    return predict_and_write(settings.prepare(path, model), out, model, settings, progress)
