"""`pcam-explain`: what drove the tumour score: attribution panels, galleries, group views.

    pcam-explain INPUT... --out=DIR [--model=MODEL_DIR|WORKDIR] [--method=gradcam,gradient]
    pcam-explain --predictions=FILE.csv --out=DIR [--model=...] [--method=gradcam] [--per_row=6]
    pcam-explain --group_views INPUT --out=DIR [--model=...] [--layer=NAME] [--transform=1]

1. Panels. INPUT is what pcam-predict takes (image files, folders, PCam ``_x.h5`` files; the same
   patch policy and labels from ``0``/``1`` folders). For each patch (at most --limit), DIR gets a
   PNG: the patch with its centre 32x32 outlined, p_tumour, and one overlay per --method; and
   ``explanations.csv`` (path, index, label, p_tumour, panel).
2. Gallery. --predictions is a CSV written by pcam-predict (path[, index], label, p_tumour) or by
   pcam-eval (WORKDIR/eval/<split>_predictions.csv: the patches are read back from that
   workdir's configured data, and --model defaults to that workdir at the evaluated step). DIR
   gets ``gallery.png``, the most confident tumour and normal patches and the worst false
   positives and false negatives (--per_row each) above their maps, and ``gallery.csv``.
3. Group views (--group_views, one INPUT patch): ``filters.png``, the learned lifting filters of
   a p4/p4m model in their 4 or 8 poses, and ``orbit.png``, the features at --layer of the patch
   and of its transform h (--transform, 4*mirror + quarter turns), beside h applied to the
   first: equal for a G-CNN (the largest difference is printed), not for a plain model.

Methods (--method, comma-separated, or "all"): gradcam (coarse regions; the default),
gradient, smoothgrad (--samples noisy copies), integrated_gradients (--steps, from a flat patch
of the training mean colour). pcam_jax/explain/attribution.py says what each computes and which are
exactly rotation/mirror-equivariant. DIR is written whole or not at all (it must be new or
empty).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from pcam_jax.cli import common
from pcam_jax.errors import InputError, PcamError
from pcam_jax.explain.attribution import METHODS
from pcam_jax.explain.workflows import (
    AttributionOptions,
    explain_group,
    explain_patches,
    explain_predictions,
    parse_methods,
)
from pcam_jax.infer.load import load_model
from pcam_jax.runtime.files import check_new_dir

_METHOD = flags.DEFINE_string(
    "method", "gradcam", f"Comma-separated attribution methods, or 'all': {', '.join(METHODS)}."
)
_LAYER = flags.DEFINE_string(
    "layer", None, "Grad-CAM / orbit layer (module name); default: the last spatial conv."
)
_PER_ROW = flags.DEFINE_integer("per_row", 6, "Gallery: patches per row.", lower_bound=1)
_DPI = flags.DEFINE_integer(
    "dpi", 100, "Gallery: resolution (dots per inch of the sheet).", lower_bound=20, upper_bound=600
)
_GROUP_VIEWS = flags.DEFINE_bool(
    "group_views", False, "Lifting filters in their poses and a feature orbit of one patch."
)
_TRANSFORM = flags.DEFINE_integer(
    "transform",
    1,
    "--group_views: the D4 element h = 4*mirror + quarter turns (1..7).",
    lower_bound=1,
    upper_bound=7,
)
_LIMIT = flags.DEFINE_integer(
    "limit", 200, "Panels: explain at most this many patches.", lower_bound=1
)
_SAMPLES = flags.DEFINE_integer("samples", 16, "smoothgrad: noisy copies per patch.", lower_bound=1)
_STEPS = flags.DEFINE_integer(
    "steps", 32, "integrated_gradients: integration steps.", lower_bound=1
)


def main(argv: Sequence[str]) -> None:
    inputs = argv[1:]
    if not common.OUT.value or not (inputs or common.PREDICTIONS.value):
        sys.exit("pcam-explain: error: give INPUT... or --predictions=FILE.csv, and --out=DIR")
    out = Path(common.OUT.value)
    try:
        check_new_dir(out, InputError)
        options = AttributionOptions(
            methods=tuple(parse_methods(_METHOD.value)),
            layer=_LAYER.value,
            samples=_SAMPLES.value,
            steps=_STEPS.value,
            batch_size=common.batch_size(32),
        )
        if common.PREDICTIONS.value:
            if inputs:
                raise InputError("give either INPUT... or --predictions, not both")
            sizes = explain_predictions(
                Path(common.PREDICTIONS.value),
                out,
                common.MODEL.value,
                options,
                checkpoint=common.CHECKPOINT.value,
                per_row=_PER_ROW.value,
                dpi=_DPI.value,
            )
            print(f"pcam-explain: gallery {sizes} -> {out / 'gallery.png'}")
            return
        model = load_model(common.MODEL.value, common.CHECKPOINT.value)
        if _GROUP_VIEWS.value:
            info = explain_group(inputs, out, model, layer=_LAYER.value, transform=_TRANSFORM.value)
            print(
                f"pcam-explain: {info['group']} model, layer {info['layer']}, h={info['h']}: "
                f"max |f(T_h x) - L_h f(x)| / max|f| = {info['relative_max_difference']:.2e} "
                f"-> {out}"
            )
            return
        done = explain_patches(inputs, out, model, options, limit=_LIMIT.value)
    except (PcamError, OSError) as e:
        sys.exit(f"pcam-explain: error: {e}")
    if done["given"] > done["explained"]:
        print(
            f"pcam-explain: {done['given']} patches given; the first {done['explained']} are "
            "explained (--limit)"
        )
    print(f"pcam-explain: {done['explained']} panels -> {out}")


def run() -> None:
    """Console-script entry point."""
    common.run_binary(
        main,
        __doc__,
        [__name__],
        shared=("predictions", "out", "model", "checkpoint", "batch_size"),
    )


if __name__ == "__main__":
    run()
