"""CAMELYON16 evaluation: ground truth, the challenge's FROC and pcam-camelyon-eval.

Owns: the ground-truth readers, ASAP XML and QuPath GeoJSON to level-0 polygons and their
rasterising (``annotations``) and mask TIFFs (``masks``), to a mask at a chosen downsample; the
lesion-level FROC exactly as the challenge's Evaluation_FROC.py computes it, as pure functions
(``froc``); a pcam-slide cohort scored against a ground-truth folder (``evaluate``); and the
slide-level AUC, the FROC and their files and figures, with ``run_camelyon_eval``,
pcam-camelyon-eval's library function (``report``).
Imports: wsi (the slide folder's names, detections), infer (metrics), runtime, errors; never
train or explain.
"""
