"""pcam-export's library function: a training workdir's checkpoint as a model bundle.

``export(workdir, out, checkpoint, weights)`` loads one checkpoint (``load.load_workdir``),
gathers its validation metrics (the checkpoint's own and every pcam-eval result in
WORKDIR/eval/ for the same step, ``workdir.eval_results``), renders the card and writes the
bundle with ``bundle.save_bundle`` (all or nothing).

A bundle travels, so its provenance holds no path of the machine that exported it
(``portable_provenance``): the run is named by its directory's name, the training data by its
folder's name (with the data's fingerprint, kept in ``norm``), and the export date and the
commit of the code that exported it (when it runs from a git checkout) are added.
"""

from __future__ import annotations

import copy
import datetime
import subprocess
from pathlib import Path
from typing import Any

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
    loaded.info = portable_provenance(loaded.info, workdir)
    return save_bundle(loaded, out, card=model_card(loaded, loaded.info["metrics"]))


def portable_provenance(info: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A copy of a loaded workdir's `info` (with ``training``, the flattened config) fit for a
    bundle: ``source.workdir`` becomes ``source.run`` (the directory's name), the data root
    (``training["data.root"]``, each metric's ``data_root``) the data folder's name, also kept
    as ``source.dataset``; ``source.exported`` (today) and ``source.commit`` are added."""
    info = copy.deepcopy(info)
    dataset = Path(str(info["training"].get("data.root", ""))).name
    info["training"]["data.root"] = dataset
    for metric in info.get("metrics", {}).values():
        if "data_root" in metric:
            metric["data_root"] = Path(str(metric["data_root"])).name
    source = info["source"]
    source.pop("workdir", None)
    source.update(
        run=Path(workdir).resolve().name,
        dataset=dataset,
        exported=datetime.date.today().isoformat(),
        commit=code_commit(),
    )
    return info


def code_commit() -> str | None:
    """The commit of the pcam_jax checkout this runs from (with ``+changes`` when its tracked
    files differ from it), or None outside a git checkout."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
