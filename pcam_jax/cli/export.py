"""`pcam-export`: a trained workdir -> a self-contained model bundle (see pcam_jax.infer).

    pcam-export --workdir=W [--checkpoint=best|last|STEP] [--weights=ema|raw]
                [--storage_dtype=float32|float16] --out=MODEL_DIR

MODEL_DIR (new; written under a temporary name and renamed at the end) gets bundle.json,
variables.msgpack and MODEL.md, the model card: what the model is, what it was trained on and
how, its validation metrics (the checkpoint's own and every pcam-eval result in W/eval/ for the
same step), its input (96x96 RGB H&E patches at 0.972 um/px), intended use and limits. A bundle
loads with ``--model=MODEL_DIR`` in pcam-eval's siblings pcam-predict and pcam-slide, needs no
training data, and is checked for its format version when loaded. ``--storage_dtype=float16``
halves its size; it is refused unless p(tumour) on the run's validation split stays within 1e-3
of the float32 weights' (``infer.export.HALF_STORAGE_TOLERANCE``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags

from pcam_jax.cli import common
from pcam_jax.infer.bundle import STORAGE_DTYPES
from pcam_jax.infer.export import export

_STORAGE_DTYPE = flags.DEFINE_enum(
    "storage_dtype",
    "float32",
    list(STORAGE_DTYPES),
    "how the bundle stores its weights; float16 halves it, checked on the validation split",
)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not common.WORKDIR.value or not common.OUT.value:
        sys.exit("pcam-export: error: --workdir (a pcam-train workdir) and --out are required")
    out = export(
        common.WORKDIR.value,
        common.OUT.value,
        common.CHECKPOINT.value,
        common.WEIGHTS.value,
        _STORAGE_DTYPE.value,
    )
    print(f"pcam-export: wrote {out} (bundle.json, variables.msgpack, MODEL.md)")


def run() -> None:
    """Console-script entry point."""
    common.run_binary(main, __doc__, [__name__], shared=("workdir", "checkpoint", "weights", "out"))


if __name__ == "__main__":
    run()
