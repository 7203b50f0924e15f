"""Model bundles from training workdirs: ``export`` and the model card (MODEL.md).

``export(workdir, out, checkpoint, weights)`` loads one checkpoint of a pcam-train workdir
(``inference.load_workdir``), gathers its validation metrics (the checkpoint's own and every
pcam-eval result in WORKDIR/eval/ for the same step), renders the card and writes the bundle
with ``inference.save_bundle`` (all or nothing). The card states what the model is, its input
(96x96 RGB H&E patches at 0.972 um/px), training data and recipe, metrics, intended use and
limits, and that it is not a medical device.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pcam_jax import __version__, inference
from pcam_jax.config_base import flatten_config


def eval_results(workdir: Path, step: int) -> dict[str, dict[str, Any]]:
    """pcam-eval's results in WORKDIR/eval/*.json that scored checkpoint `step`, by file stem
    (valid, valid_tta, test, ...): n, auc, auc_ci95, accuracy, nll, weights."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((workdir / "eval").glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(result, dict) and result.get("checkpoint_step") == step:
            keep = ("n", "auc", "auc_ci95", "accuracy", "nll", "weights", "tta", "data_root")
            out[path.stem] = {k: result[k] for k in keep if k in result}
    return out


def _metric_rows(metrics: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["| evaluation | n | AUC (95% CI) | accuracy | NLL |", "|---|---:|---|---:|---:|"]
    for name, m in metrics.items():
        ci = m.get("auc_ci95")
        auc = f"{m['auc']:.4f}" + (f" ({ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
        nll = f"{m['nll']:.4f}" if "nll" in m else "-"
        rows.append(f"| {name} | {m.get('n', '-')} | {auc} | {m.get('accuracy', 0):.4f} | {nll} |")
    return rows


def _rounded(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in values) + ")"


def _split_sizes(config: Any) -> str:
    """ "train split `train` (20,000 patches), ..." (sizes when the data is still there)."""
    from pcam_jax import train

    parts = []
    for role, split in (("train", config.data.train_split), ("validation", config.data.eval_split)):
        try:
            size = f" ({len(train.make_source(config, split)):,} patches)"
        except Exception:  # the data moved or is gone: the card still gets written
            size = ""
        parts.append(f"{role} split `{split}`{size}")
    return ", ".join(parts)


def model_card(loaded: inference.LoadedModel, metrics: dict[str, dict[str, Any]]) -> str:
    """MODEL.md of a bundle: model, data, recipe, metrics, input, intended use, limits."""
    c = loaded.config
    flat = flatten_config(c)
    src = loaded.info["source"]
    model_fields = ", ".join(f"{k}={v}" for k, v in sorted(c.model.items()) if k != "name")
    aug = ", ".join(f"{k}={flat[f'augment.{k}']}" for k in sorted(c.augment) if c.augment[k])
    recipe = [
        f"- optimizer {c.optimizer.name}, peak learning rate {c.optimizer.learning_rate}, "
        f"weight decay {c.optimizer.get('weight_decay', 0)}; schedule {c.schedule.name}",
        f"- batch {c.batch_size}, {src.get('num_train_steps')} steps"
        + (f" (sized to a {c.train_minutes}-minute budget)" if c.get("train_minutes") else ""),
        f"- label smoothing {c.get('label_smoothing', 0)}, EMA decay {c.get('ema_decay', 0)}; "
        f"these are the {src['weights']} weights of step {src['step']}",
        f"- augmentation: {aug or 'none'}",
        f"- seed {src.get('seed')}",
    ]
    lines = [
        f"# Model card: {c.model.name} for PCam tumour detection",
        "",
        "A patch classifier: p(tumour) for a 96x96 RGB patch of an H&E-stained lymph-node "
        "section, where tumour means metastatic breast cancer in the patch's central 32x32 "
        "pixels (the PatchCamelyon label).",
        "",
        "**Not a medical device.** For research only; not for diagnosis or any clinical decision.",
        "",
        "## Model",
        f"- `{c.model.name}` ({model_fields}); {loaded.info.get('parameters', '?')} parameters",
        f"- input: uint8 RGB patches of {loaded.patch_size}x{loaded.patch_size} pixels at "
        f"{loaded.mpp} um/px (PCam: level 2 of CAMELYON16's 40x scans), normalised with the "
        f"training split's per-channel mean {_rounded(loaded.info['norm']['mean'])} and std "
        f"{_rounded(loaded.info['norm']['std'])} (done by the model's loader)",
        "- output: softmax over (normal, tumour); p(tumour) is the second entry",
        "",
        "## Training data",
        f"- source `{c.data.source}` at `{c.data.root}`: {_split_sizes(c)}",
        "- PCam patches come from 400 CAMELYON16 slides scanned at two Dutch centres "
        "(Radboud UMC, UMC Utrecht); other stains, scanners, tissues and magnifications are "
        "out of distribution",
        "",
        "## Recipe",
        *recipe,
        "",
        "## Metrics",
        *(
            _metric_rows(metrics)
            if metrics
            else ["No validation metrics were recorded for this checkpoint."]
        ),
        "",
        "Validation patches share the training data's source (the same centres); expect lower "
        "figures on other slides, centres and scanners.",
        "",
        "## Use",
        "```",
        "pcam-predict PATCHES... --model=THIS_DIR --out=predictions.csv",
        "pcam-slide SLIDE.svs --model=THIS_DIR --out=slide_outputs/",
        "```",
        "",
        "## Provenance",
        f"- exported by pcam_jax {__version__} on {datetime.date.today().isoformat()} from "
        f"`{src.get('workdir', '?')}`, checkpoint {src['step']} ({src['weights']} weights)",
        f"- bundle format version {inference.BUNDLE_FORMAT_VERSION}",
        "",
    ]
    return "\n".join(lines)


def export(
    workdir: str | Path, out: str | Path, checkpoint: str = "best", weights: str = "ema"
) -> Path:
    """Writes the bundle of `workdir`'s `checkpoint` to `out`; returns `out`."""
    workdir = Path(workdir)
    loaded = inference.load_workdir(workdir, checkpoint, weights)
    step = loaded.info["source"]["step"]
    metrics = {}
    if loaded.info["metrics"].get("valid"):
        metrics["validation during training"] = loaded.info["metrics"]["valid"]
    metrics.update(eval_results(workdir, step))
    loaded.info["metrics"] = metrics
    loaded.info["parameters"] = inference.count_parameters(loaded.variables)
    loaded.info["training"] = flatten_config(loaded.config)
    return inference.save_bundle(loaded, out, card=model_card(loaded, metrics))
