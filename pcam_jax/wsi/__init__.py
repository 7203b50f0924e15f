"""Whole slides: pcam-slide from a slide file to its cell map, files and lesion detections.

Owns: opening a slide, its resolution, its cell grid, its tissue and its blocks (``slide``);
the two ways to predict the blocks, window by window and dense (``predictors``); the run on one
slide, its settings and ``run_slide``, pcam-slide's library function (``run``); the slide
folder's files (``outputs``), named in one place (``layout``); lesion detections in the
CAMELYON16 formats (``detections``); cohorts of slides in one resumable folder (``cohort``),
which many processes may share (``cohort_folder``), each slide folder recording what it was
computed from (``provenance``).
Imports: infer (a loaded model and its predict path), equivariant, models, runtime, errors; never
train or explain. ``pcam_jax.camelyon`` reads the folders back by ``layout``'s names.
"""
