"""Evaluation of a trained workdir on a split; AUC with a bootstrap interval.

`evaluate()` is what `pcam-eval` (pcam_jax/eval_main.py) runs, in one process
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

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from pcam_jax import inference, train
from pcam_jax.data.fileio import atomic_path
from pcam_jax.data.pcam_format import META_COLUMNS
from pcam_jax.distributed import is_primary, make_mesh
from pcam_jax.errors import PcamError
from pcam_jax.metrics import binary_metrics, slide_metrics


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `--config.a.b=value` arguments to `config`, typed like the stored field."""
    for arg in overrides:
        body = arg[len("--config.") :]
        if "=" not in body:
            raise PcamError(f"{arg}: expected --config.FIELD=VALUE")
        dotted, raw = body.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
                raise PcamError(f"{arg}: unknown config field {dotted!r}")
            node = node[p]
        if leaf not in node:
            raise PcamError(f"{arg}: unknown config field {dotted!r}")
        old = node[leaf]
        try:
            if isinstance(old, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: Any = raw.lower() in ("true", "1")
            elif isinstance(old, int | float):
                value = type(old)(raw)
            else:
                value = raw
        except ValueError:
            raise PcamError(f"{arg}: {raw!r} is not a valid {type(old).__name__}") from None
        node[leaf] = value


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
    loaded = inference.load_workdir(workdir, checkpoint, weights)
    step = loaded.info["source"]["step"]
    source = train.make_source(config, split)
    mesh = make_mesh()
    predict_fn = inference.make_predict_fn(loaded.model, loaded.preprocess, mesh, tta=tta)
    loader = inference.make_eval_loader(config, source)
    pred = inference.predict(predict_fn, loaded.variables, loader, mesh)
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
    name = f"{split}_tta" if tta else split
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / f"{name}_predictions.csv", pred, meta)
    if meta is not None:
        _write_csv(out / f"{name}_slides.csv", slide_rows)
    _plot_roc(out / f"{name}_roc.png", pred["label"], pred["p_tumour"], result)
    _plot_confusion(out / f"{name}_confusion.png", result)
    with atomic_path(out / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    return result


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


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
    _write_csv(path, rows)


def _plot_roc(path: Path, labels: np.ndarray, p: np.ndarray, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _plot_confusion(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
