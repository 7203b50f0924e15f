"""`pcam-predict`: p(tumour) for your own patches with a trained model or bundle.

    pcam-predict INPUT... --out=FILE.csv [--model=MODEL_DIR|WORKDIR] [--checkpoint=best]
                 [--tta] [--batch_size=256]

INPUT is any mix of
  * image files (.png, .jpg, .jpeg, .tif, .tiff, .bmp);
  * folders, searched recursively for those; an image whose parent folder is named ``0`` or
    ``normal`` gets label 0, ``1``, ``tumor`` or ``tumour`` label 1 (PCam's folder layout);
  * PCam HDF5 files ``*_x.h5`` (dataset ``x``, uint8 (N, 96, 96, 3)); the labels come from the
    sibling ``*_y.h5`` when it exists.

--model is a bundle (pcam-export) or a pcam-train workdir (--checkpoint picks best, last or a
step; EMA weights when kept); left out, the model bundled with pcam_jax.

Patch policy (documented, not silent): images are decoded with Pillow and converted to RGB
(greyscale and palette images are expanded, an alpha channel is dropped); an image larger than
the model's 96x96 in either side is centre-cropped to 96x96 (the PCam label concerns the centre);
an image smaller than 96 in either side is an error naming the file, as is a file that cannot be
read: the run stops there and writes nothing. Resample images taken at another resolution to
0.972 um/px first (or use pcam-slide, which does it for whole slides).

FILE.csv (written whole or not at all): one row per patch, in input order, with the columns
``path`` (or ``path,index`` for HDF5 rows), ``label`` (empty when unknown), ``p_tumour``. When
every patch has a label, the AUC (with its 95% bootstrap interval) and the accuracy at 0.5 are
printed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pcam_jax.cli import common
from pcam_jax.errors import InputError, PcamError
from pcam_jax.infer.load import load_model
from pcam_jax.infer.metrics import binary_metrics
from pcam_jax.infer.patches import collect_inputs, input_files, predict_patches, write_csv
from pcam_jax.runtime.files import check_output_file


def main(argv: Sequence[str]) -> None:
    inputs = argv[1:]
    if not inputs or not common.OUT.value:
        sys.exit("pcam-predict: error: give INPUT... (images, folders, _x.h5 files) and --out")
    out = Path(common.OUT.value)
    try:
        check_output_file(out, error=InputError)
        refs = collect_inputs(inputs)
        check_output_file(out, input_files(refs), error=InputError)
        model = load_model(common.MODEL.value, common.CHECKPOINT.value)
        p = predict_patches(
            model,
            refs,
            batch_size=common.batch_size(),
            tta=common.TTA.value,
            progress=common.PROGRESS.value,
        )
        write_csv(out, refs, p)
    except (PcamError, OSError) as e:
        sys.exit(f"pcam-predict: error: {e}")
    print(f"pcam-predict: {len(refs)} patches -> {out}")
    labels = [r.label for r in refs]
    if all(v is not None for v in labels) and 0 < sum(labels) < len(labels):
        m = binary_metrics(np.asarray(labels), p)
        ci = m["auc_ci95"]
        print(
            f"pcam-predict: AUC {m['auc']:.4f} (95% CI {ci[0]:.4f}-{ci[1]:.4f}), accuracy "
            f"{m['accuracy']:.4f} at 0.5, n={m['n']}"
        )


def run() -> None:
    """Console-script entry point."""
    common.run_binary(main, __doc__, [__name__], shared=common.PREDICTION_FLAGS)


if __name__ == "__main__":
    run()
