"""`pcam-export`: a trained workdir -> a self-contained model bundle (see pcam_jax.inference).

    pcam-export --workdir=W [--checkpoint=best|last|STEP] [--weights=ema|raw] --out=MODEL_DIR

MODEL_DIR (new; written under a temporary name and renamed at the end) gets bundle.json,
variables.msgpack and MODEL.md, the model card: what the model is, what it was trained on and
how, its validation metrics (the checkpoint's own and every pcam-eval result in W/eval/ for the
same step), its input (96x96 RGB H&E patches at 0.972 um/px), intended use and limits. A bundle
loads with ``--model=MODEL_DIR`` in pcam-eval's siblings pcam-predict and pcam-slide, needs no
training data, and is checked for its format version when loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags

from pcam_jax.binaries import run_binary
from pcam_jax.errors import PcamError
from pcam_jax.export import export

_WORKDIR = flags.DEFINE_string("workdir", None, "A pcam-train workdir.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, last, or a saved step.")
_WEIGHTS = flags.DEFINE_enum(
    "weights", "ema", ["ema", "raw"], "ema: the EMA weights when the run kept them; raw: never."
)
_OUT = flags.DEFINE_string("out", None, "The bundle directory to create (must not exist).")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value or not _OUT.value:
        sys.exit("pcam-export: error: --workdir (a pcam-train workdir) and --out are required")
    try:
        out = export(_WORKDIR.value, _OUT.value, _CHECKPOINT.value, _WEIGHTS.value)
    except PcamError as e:
        sys.exit(f"pcam-export: error: {e}")
    print(f"pcam-export: wrote {out} (bundle.json, variables.msgpack, MODEL.md)")


def run() -> None:
    """Console-script entry point."""
    run_binary(main, __doc__, [__name__])


if __name__ == "__main__":
    run()
