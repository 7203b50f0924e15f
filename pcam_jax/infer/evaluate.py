"""Evaluation of a trained workdir on a split; AUC with a bootstrap interval.

`evaluate()` is what `pcam-eval` (pcam_jax/cli/eval.py) runs, in one process
or several (each reads a share of the split; process 0 writes). It loads the
model variables (not the optimizer) and the normalisation statistics
saved at training time, so the data root may hold only the evaluated split.
Writes into DIR/eval/ (``<split>`` becomes ``<split>_tta`` with --tta):

  <split>.json              auc, auc_ci95, accuracy, nll, n, threshold, confusion, ...
  <split>_predictions.csv   index, label, p_tumour (+ the PCam meta columns when present)
  <split>_roc.png, <split>_confusion.png
  <split>_slides.csv        per-WSI max/mean probability (when the meta CSV exists)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from pcam_jax.data import sources
from pcam_jax.data.pcam_format import META_COLUMNS
from pcam_jax.infer.load import load_workdir
from pcam_jax.infer.metrics import binary_metrics, slide_metrics
from pcam_jax.infer.predict import make_eval_loader, make_predict_fn, predict
from pcam_jax.runtime.distributed import is_primary, make_mesh
from pcam_jax.runtime.files import write_dict_csv
from pcam_jax.runtime.plotting import pyplot, save_figure
from pcam_jax.workdir import PREDICTIONS_SUFFIX, eval_dir, eval_name, write_eval_result


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    checkpoint: str = "best",
    split: str = "test",
    tta: bool = False,
    n_bootstrap: int = 1000,
    weights: str = "ema",
) -> dict[str, Any]:
    """Evaluates a checkpoint of `workdir` on `split`; writes DIR/eval/; returns the metrics.

    weights: "ema" (the EMA weights when the checkpoint holds them, else the raw ones) or
    "raw"; the result's ``weights`` says which were used.
    """
    workdir = Path(workdir)
    loaded = load_workdir(workdir, checkpoint, weights)
    step = loaded.info["source"]["step"]
    source = sources.from_config(config, split)
    mesh = make_mesh()
    predict_fn = make_predict_fn(loaded.model, loaded.preprocess, mesh, tta=tta)
    loader = make_eval_loader(config, source)
    pred = predict(predict_fn, loaded.variables, loader, mesh)
    result = binary_metrics(pred["label"], pred["p_tumour"], n_bootstrap=n_bootstrap)
    result.update(
        split=split,
        checkpoint_step=step,
        tta=tta,
        weights=loaded.info["source"]["weights"],
        model=config.model.name,
        data_root=str(config.data.root),
    )
    meta = source.meta()
    if meta is not None:
        slides = slide_metrics(
            meta["wsi"][pred["index"]], meta["tumor_patch"][pred["index"]], pred["p_tumour"]
        )
        slide_rows = slides.pop("slides")
        result["slides"] = slides
    if not is_primary():  # every process has every prediction; process 0 writes them
        return result
    name = eval_name(split, tta)
    out = eval_dir(workdir)
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / f"{name}{PREDICTIONS_SUFFIX}", pred, meta)
    if meta is not None:
        write_dict_csv(out / f"{name}_slides.csv", slide_rows)
    _plot_roc(out / f"{name}_roc.png", pred["label"], pred["p_tumour"], result)
    _plot_confusion(out / f"{name}_confusion.png", result)
    write_eval_result(workdir, name, result)
    return result


def _write_predictions(
    path: Path, pred: dict[str, np.ndarray], meta: dict[str, np.ndarray] | None
) -> None:
    rows = []
    for i, index in enumerate(pred["index"]):
        row: dict[str, Any] = {
            "index": int(index),
            "label": int(pred["label"][i]),
            "p_tumour": repr(float(pred["p_tumour"][i])),
        }
        if meta is not None:
            row.update({c: meta[c][index] for c in META_COLUMNS})
        rows.append(row)
    write_dict_csv(path, rows)


def _plot_roc(path: Path, labels: np.ndarray, p: np.ndarray, result: dict[str, Any]) -> None:
    from sklearn.metrics import roc_curve

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if 0 < labels.sum() < len(labels):
        fpr, tpr, _ = roc_curve(labels, p)
        ci = result.get("auc_ci95")
        label = f"AUC {result['auc']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC, {result['split']} (n={result['n']})",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _plot_confusion(path: Path, result: dict[str, Any]) -> None:
    plt = pyplot()

    c = result["confusion"]
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["normal", "tumour"],
        yticklabels=["normal", "tumour"],
        xlabel="predicted",
        ylabel="true",
        title=f"threshold {result['threshold']}",
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
