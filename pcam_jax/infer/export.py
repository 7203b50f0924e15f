"""pcam-export's library function: a training workdir's checkpoint as a model bundle.

``export(workdir, out, checkpoint, weights)`` loads one checkpoint (``load.load_workdir``),
gathers its validation metrics (the checkpoint's own and every pcam-eval result in
WORKDIR/eval/ for the same step, ``workdir.eval_results``), renders the card and writes the
bundle with ``bundle.save_bundle`` (all or nothing).
"""

from __future__ import annotations

from pathlib import Path

from pcam_jax.config import flatten_config
from pcam_jax.infer.bundle import check_bundle_out, model_card, save_bundle
from pcam_jax.infer.load import load_workdir
from pcam_jax.infer.model import count_parameters
from pcam_jax.workdir import eval_results


def export(
    workdir: str | Path, out: str | Path, checkpoint: str = "best", weights: str = "ema"
) -> Path:
    """Writes the bundle of `workdir`'s `checkpoint` to `out`; returns `out`."""
    workdir = Path(workdir)
    check_bundle_out(out)  # before the (slow) checkpoint restore
    loaded = load_workdir(workdir, checkpoint, weights)
    step = loaded.info["source"]["step"]
    metrics = {}
    if loaded.info["metrics"].get("valid"):
        metrics["validation during training"] = loaded.info["metrics"]["valid"]
    metrics.update(eval_results(workdir, step))
    loaded.info["metrics"] = metrics
    loaded.info["parameters"] = count_parameters(loaded.variables)
    loaded.info["training"] = flatten_config(loaded.config)
    return save_bundle(loaded, out, card=model_card(loaded, metrics))
