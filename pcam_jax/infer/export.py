"""pcam-export's library function: a training workdir's checkpoint as a model bundle.

``export(workdir, out, checkpoint, weights, storage_dtype)`` loads one checkpoint
(``load.load_workdir``), gathers its validation metrics (the checkpoint's own and every
pcam-eval result in WORKDIR/eval/ for the same step, ``workdir.eval_results``), renders the card
and writes the bundle with ``bundle.save_bundle`` (all or nothing).

float16 storage halves a bundle; it is written only after ``check_half_storage`` has run the
run's validation split through both weight sets and found p(tumour) moved by at most
HALF_STORAGE_TOLERANCE (else ModelError, and nothing is written).

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

import jax
import numpy as np

from pcam_jax.config import flatten_config
from pcam_jax.data import sources
from pcam_jax.errors import ModelError
from pcam_jax.infer.bundle import (
    STORAGE_DTYPES,
    check_bundle_out,
    model_card,
    save_bundle,
    stored_variables,
)
from pcam_jax.infer.load import load_workdir
from pcam_jax.infer.model import count_parameters
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.workdir import eval_results

#: The largest change of p(tumour) on the validation split that float16 storage may cause.
HALF_STORAGE_TOLERANCE = 1e-3


def export(
    workdir: str | Path,
    out: str | Path,
    checkpoint: str = "best",
    weights: str = "ema",
    storage_dtype: str = "float32",
) -> Path:
    """Writes the bundle of `workdir`'s `checkpoint` to `out`, floating-point weights stored as
    `storage_dtype` (checked first when not float32); returns `out`."""
    workdir = Path(workdir)
    if storage_dtype not in STORAGE_DTYPES:
        raise ModelError(f"--storage_dtype={storage_dtype}: use one of {', '.join(STORAGE_DTYPES)}")
    check_bundle_out(out)  # before the (slow) checkpoint restore
    loaded = load_workdir(workdir, checkpoint, weights)
    if storage_dtype != "float32":
        loaded.info["storage"] = check_half_storage(loaded, storage_dtype)
    step = loaded.info["source"]["step"]
    metrics = {}
    if loaded.info["metrics"].get("valid"):
        metrics["validation during training"] = loaded.info["metrics"]["valid"]
    metrics.update(eval_results(workdir, step))
    loaded.info["metrics"] = metrics
    loaded.info["parameters"] = count_parameters(loaded.variables)
    loaded.info["training"] = flatten_config(loaded.config)
    loaded.info = portable_provenance(loaded.info, workdir)
    return save_bundle(
        loaded, out, card=model_card(loaded, loaded.info["metrics"]), storage_dtype=storage_dtype
    )


def check_half_storage(
    loaded: LoadedModel, storage_dtype: str, *, batch: int = 250
) -> dict[str, object]:
    """Runs the validation split of `loaded`'s config through its weights as they are and as
    `storage_dtype` would store them; returns {dtype, split, n, max_abs_dp, tolerance}, or
    raises ModelError when p(tumour) moves by more than HALF_STORAGE_TOLERANCE or the split
    cannot be read (the check needs it)."""
    split = loaded.config.data.eval_split
    try:
        source = sources.from_config(loaded.config, split)
    except Exception as e:  # the data moved or is gone
        raise ModelError(
            f"--storage_dtype={storage_dtype}: the run's validation split {split!r} is needed to "
            f"check what the smaller weights change, and it cannot be read ({e}); export with "
            "--storage_dtype=float32, or make the data available at the run's data.root"
        ) from None
    rounded = jax.tree_util.tree_map(
        lambda stored, full: jax.numpy.asarray(stored, full.dtype),
        stored_variables(loaded.variables, storage_dtype),
        loaded.variables,
    )
    half = LoadedModel(loaded.config, loaded.model, rounded, loaded.preprocess, loaded.info)
    chunks = (
        source.read_images(lo, min(lo + batch, len(source))) for lo in range(0, len(source), batch)
    )
    worst = 0.0
    for images in chunks:
        dp = loaded.predict_images(images, batch_size=batch) - half.predict_images(
            images, batch_size=batch
        )
        worst = max(worst, float(np.max(np.abs(dp))))
    if worst > HALF_STORAGE_TOLERANCE:
        raise ModelError(
            f"--storage_dtype={storage_dtype}: p(tumour) on the {len(source)} patches of split "
            f"{split!r} moves by up to {worst:.2e} (> {HALF_STORAGE_TOLERANCE:g}); export with "
            "--storage_dtype=float32"
        )
    return {
        "dtype": storage_dtype,
        "split": split,
        "n": len(source),
        "max_abs_dp": worst,
        "tolerance": HALF_STORAGE_TOLERANCE,
    }


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
