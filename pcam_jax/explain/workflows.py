"""pcam-explain's workflows as plain functions: panels of patches, a gallery of a predictions
CSV, and the group views of a G-CNN.

Each takes its inputs, the output folder (written whole or not at all, ``runtime.files``), a
loaded model (``pcam_jax.infer``) and an ``AttributionOptions``, and returns what it made; the
binary (``pcam_jax.cli.explain``) only reads flags and prints. The methods and their
equivariance are in ``explain.attribution``, the figures in ``explain.figures``.
Imports: explain.attribution/figures, infer, workdir, data, runtime, errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pcam_jax.data import sources
from pcam_jax.errors import InputError
from pcam_jax.explain import figures
from pcam_jax.explain.attribution import METHODS, attribute, default_gradcam_layer
from pcam_jax.infer.load import load_model
from pcam_jax.infer.patches import PatchRef, collect_inputs, read_batches
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.files import atomic_dir, write_csv
from pcam_jax.workdir import eval_predictions_context, read_config


@dataclasses.dataclass(frozen=True)
class AttributionOptions:
    """How maps are computed: the methods (the first is the gallery's), the Grad-CAM layer
    (None: the last spatial conv), smoothgrad's noisy copies, integrated gradients' steps, and
    patches per attribution batch."""

    methods: tuple[str, ...] = ("gradcam",)
    layer: str | None = None
    samples: int = 16
    steps: int = 32
    batch_size: int = 32


def parse_methods(spec: str) -> list[str]:
    """'all' or a comma-separated list of METHODS, in order, without repeats."""
    names = list(METHODS) if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise InputError(f"--method={spec}: expected 'all' or some of {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def _maps(
    model: LoadedModel, images: np.ndarray, methods: Sequence[str], options: AttributionOptions
) -> dict[str, np.ndarray]:
    layer = options.layer
    if "gradcam" in methods and layer is None:
        layer = default_gradcam_layer(model.model, model.variables, model.patch_size)
    settings = {"smoothgrad": {"samples": options.samples}}
    settings["integrated_gradients"] = {"steps": options.steps}
    return {
        m: attribute(
            model,
            images,
            m,
            batch_size=options.batch_size,
            layer=layer if m == "gradcam" else None,
            **settings.get(m, {}),
        )
        for m in methods
    }


def _panel_name(ref: PatchRef, used: set[str]) -> str:
    stem = ref.path.stem if ref.index is None else f"{ref.path.stem}_{ref.index}"
    name, k = f"{stem}.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.png"
    used.add(name)
    return name


def explain_patches(
    inputs: Sequence[str],
    out: Path,
    model: LoadedModel,
    options: AttributionOptions,
    limit: int = 200,
) -> dict[str, int]:
    """A panel per INPUT patch (the first `limit`) and explanations.csv in `out`; returns
    ``{"given": patches named, "explained": panels written}``."""
    refs = collect_inputs(inputs)
    given = len(refs)
    refs = refs[:limit]
    images = np.concatenate(list(read_batches(refs, 256, model.patch_size)))
    p = model.predict_images(images)
    maps = _maps(model, images, options.methods, options)
    with atomic_dir(out) as tmp:
        used: set[str] = set()
        rows = []
        for i, ref in enumerate(refs):
            name = _panel_name(ref, used)
            figures.save_panel(
                tmp / name,
                images[i],
                {m: maps[m][i] for m in options.methods},
                float(p[i]),
                ref.label,
                title=str(ref.path) + ("" if ref.index is None else f"[{ref.index}]"),
            )
            rows.append(
                [
                    str(ref.path),
                    "" if ref.index is None else ref.index,
                    "" if ref.label is None else ref.label,
                    repr(float(p[i])),
                    name,
                ]
            )
        header = ["path", "index", "label", "p_tumour", "panel"]
        write_csv(tmp / "explanations.csv", header, rows)
    return {"given": given, "explained": len(refs)}


def _read_gallery_images(pred: dict, picks: np.ndarray, csv_path: Path, size: int) -> np.ndarray:
    if pred["path"] is not None:
        refs = []
        for i in picks:
            index = None if pred["index"] is None or pred["index"][i] < 0 else int(pred["index"][i])
            refs.append(PatchRef(Path(pred["path"][i]), index))
        return np.concatenate(list(read_batches(refs, 256, size)))
    workdir, split, _ = eval_predictions_context(csv_path)
    source = sources.from_config(read_config(workdir), split)
    return np.stack([source.read_image(int(pred["index"][i])) for i in picks])


def explain_predictions(
    csv_path: Path,
    out: Path,
    model_spec: str | None,
    options: AttributionOptions,
    *,
    checkpoint: str = "best",
    per_row: int = 6,
    dpi: int = 100,
) -> dict[str, int]:
    """gallery.png and gallery.csv in `out` for a pcam-predict or pcam-eval predictions CSV
    (`model_spec` None: the workdir of a pcam-eval CSV at its step, else the bundled model);
    returns the size of each gallery row."""
    method = options.methods[0]
    pred = figures.read_predictions(csv_path)
    labels = pred["label"] if np.all(pred["label"] >= 0) else None
    rows = figures.gallery_selection(pred["p_tumour"], labels, per_row)
    picks = np.unique(np.concatenate([v for v in rows.values()] + [np.zeros(0, int)]))
    if model_spec is None and pred["path"] is None:
        workdir, _, step = eval_predictions_context(csv_path)
        model_spec, checkpoint = str(workdir), str(step) if step is not None else checkpoint
    model = load_model(model_spec, checkpoint)
    images = _read_gallery_images(pred, picks, csv_path, model.patch_size)
    position = {int(i): k for k, i in enumerate(picks)}
    local = {name: np.array([position[int(i)] for i in idx], int) for name, idx in rows.items()}
    maps = _maps(model, images, [method], options)[method]
    p = pred["p_tumour"][picks]
    lab = None if labels is None else labels[picks]
    with atomic_dir(out) as tmp:
        figures.save_gallery(
            tmp / "gallery.png",
            images,
            maps,
            p,
            lab,
            local,
            method,
            title=f"{csv_path.name}: {method.replace('_', ' ')} maps",
            dpi=dpi,
        )
        table = [
            [name, rank, int(i), int(pred["label"][i]), repr(float(pred["p_tumour"][i]))]
            for name, idx in rows.items()
            for rank, i in enumerate(idx)
        ]
        write_csv(tmp / "gallery.csv", ["row", "rank", "csv_row", "label", "p_tumour"], table)
    return {name: len(v) for name, v in rows.items()}


def explain_group(
    inputs: Sequence[str],
    out: Path,
    model: LoadedModel,
    *,
    layer: str | None = None,
    transform: int = 1,
) -> dict[str, Any]:
    """filters.png (group models) and orbit.png in `out` for one patch and the D4 element
    `transform`; returns the group, the layer, h and the orbit's relative largest difference."""
    refs = collect_inputs(inputs)
    if len(refs) != 1:
        raise InputError(f"--group_views takes one patch; INPUT names {len(refs)}")
    image = next(read_batches(refs, 1, model.patch_size))[0]
    layer = layer or default_gradcam_layer(model.model, model.variables, model.patch_size)
    views = figures.orbit_views(model, image, layer, transform)
    group = views["group"]
    with atomic_dir(out) as tmp:
        if group != "z2":
            poses = figures.lifting_filter_poses(model)
            figures.save_filter_poses(tmp / "filters.png", poses, group)
        figures.save_orbit(tmp / "orbit.png", views)
    return {
        "group": group,
        "layer": layer,
        "h": views["h"],
        "relative_max_difference": views["relative_max_difference"],
    }
