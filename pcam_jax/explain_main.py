"""`pcam-explain`: what drove the tumour score: attribution panels, galleries, group views.

    pcam-explain INPUT... --out=DIR [--model=MODEL_DIR|WORKDIR] [--method=gradcam,gradient]
    pcam-explain --predictions=FILE.csv --out=DIR [--model=...] [--method=gradcam] [--per_row=6]
    pcam-explain --group_views INPUT --out=DIR [--model=...] [--layer=NAME] [--transform=1]

1. Panels. INPUT is what pcam-predict takes (image files, folders, PCam ``_x.h5`` files; the same
   patch policy and labels from ``0``/``1`` folders). For each patch (at most --limit), DIR gets a
   PNG: the patch with its centre 32x32 outlined, p_tumour, and one overlay per --method; and
   ``explanations.csv`` (path, index, label, p_tumour, panel).
2. Gallery. --predictions is a CSV written by pcam-predict (path[, index], label, p_tumour) or by
   pcam-eval (WORKDIR/eval/<split>_predictions.csv: the patches are read back from that
   workdir's configured data, and --model defaults to that workdir at the evaluated step). DIR
   gets ``gallery.png``, the most confident tumour and normal patches and the worst false
   positives and false negatives (--per_row each) above their maps, and ``gallery.csv``.
3. Group views (--group_views, one INPUT patch): ``filters.png``, the learned lifting filters of
   a p4/p4m model in their 4 or 8 poses, and ``orbit.png``, the features at --layer of the patch
   and of its transform h (--transform, 4*mirror + quarter turns), beside h applied to the
   first: equal for a G-CNN (the largest difference is printed), not for a plain model.

Methods (--method, comma-separated, or "all"): gradcam (coarse regions; the default),
gradient, smoothgrad (--samples noisy copies), integrated_gradients (--steps, from a flat patch
of the training mean colour). pcam_jax/attribution.py says what each computes and which are
exactly rotation/mirror-equivariant. DIR is written whole or not at all (it must be new or
empty).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags

from pcam_jax import explain, inference
from pcam_jax.attribution import METHODS, attribute, default_gradcam_layer
from pcam_jax.binaries import run_binary
from pcam_jax.data.fileio import atomic_dir, check_new_dir
from pcam_jax.errors import PcamError
from pcam_jax.patches import InputError, PatchRef, collect_inputs, read_batches

_OUT = flags.DEFINE_string("out", None, "The folder to write (new or empty).")
_MODEL = flags.DEFINE_string(
    "model", None, "A model bundle or pcam-train workdir (default: the bundled model)."
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "For a workdir: best, last or a step.")
_METHOD = flags.DEFINE_string(
    "method", "gradcam", f"Comma-separated attribution methods, or 'all': {', '.join(METHODS)}."
)
_LAYER = flags.DEFINE_string(
    "layer", None, "Grad-CAM / orbit layer (module name); default: the last spatial conv."
)
_PREDICTIONS = flags.DEFINE_string(
    "predictions", None, "A pcam-predict or pcam-eval predictions CSV: make a gallery of it."
)
_PER_ROW = flags.DEFINE_integer("per_row", 6, "Gallery: patches per row.")
_DPI = flags.DEFINE_integer("dpi", 100, "Gallery: resolution (dots per inch of the sheet).")
_GROUP_VIEWS = flags.DEFINE_bool(
    "group_views", False, "Lifting filters in their poses and a feature orbit of one patch."
)
_TRANSFORM = flags.DEFINE_integer(
    "transform", 1, "--group_views: the D4 element h = 4*mirror + quarter turns (1..7)."
)
_LIMIT = flags.DEFINE_integer("limit", 200, "Panels: explain at most this many patches.")
_SAMPLES = flags.DEFINE_integer("samples", 16, "smoothgrad: noisy copies per patch.")
_STEPS = flags.DEFINE_integer("steps", 32, "integrated_gradients: integration steps.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Patches per attribution batch.")


def parse_methods(spec: str) -> list[str]:
    """'all' or a comma-separated list of METHODS, in order, without repeats."""
    names = list(METHODS) if spec == "all" else [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise InputError(f"--method={spec}: expected 'all' or some of {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def _settings(method: str) -> dict[str, int]:
    if method == "smoothgrad":
        return {"samples": _SAMPLES.value}
    if method == "integrated_gradients":
        return {"steps": _STEPS.value}
    return {}


def _maps(model: inference.LoadedModel, images: np.ndarray, methods: list[str]) -> dict:
    layer = _LAYER.value
    if "gradcam" in methods and layer is None:
        layer = default_gradcam_layer(model.model, model.variables, model.patch_size)
    return {
        m: attribute(
            model,
            images,
            m,
            batch_size=_BATCH.value,
            layer=layer if m == "gradcam" else None,
            **_settings(m),
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


def explain_patches(inputs: Sequence[str], out: Path, model: inference.LoadedModel) -> int:
    """Panels and explanations.csv for the INPUT patches; returns how many."""
    methods = parse_methods(_METHOD.value)
    refs = collect_inputs(inputs)
    if len(refs) > _LIMIT.value:
        print(
            f"pcam-explain: {len(refs)} patches given; the first {_LIMIT.value} are explained "
            "(--limit)"
        )
        refs = refs[: _LIMIT.value]
    images = np.concatenate(list(read_batches(refs, 256, model.patch_size)))
    p = model.predict_images(images)
    maps = _maps(model, images, methods)
    with atomic_dir(out) as tmp:
        used: set[str] = set()
        rows = []
        for i, ref in enumerate(refs):
            name = _panel_name(ref, used)
            explain.save_panel(
                tmp / name,
                images[i],
                {m: maps[m][i] for m in methods},
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
        with open(tmp / "explanations.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "index", "label", "p_tumour", "panel"])
            writer.writerows(rows)
    return len(refs)


def _eval_csv_context(path: Path) -> tuple[Path, str, int | None]:
    """(workdir, split, checkpoint step) of a pcam-eval WORKDIR/eval/<split>_predictions.csv."""
    workdir = path.resolve().parent.parent
    name = path.name.removesuffix("_predictions.csv")
    if path.parent.name != "eval" or name == path.name or not (workdir / "config.json").is_file():
        raise InputError(
            f"{path}: has an index column but no path, and is not a pcam-eval output "
            "(WORKDIR/eval/<split>_predictions.csv); give the pcam-predict CSV instead"
        )
    result = path.parent / f"{name}.json"
    step = json.loads(result.read_text()).get("checkpoint_step") if result.is_file() else None
    return workdir, name.removesuffix("_tta"), step


def _read_gallery_images(pred: dict, picks: np.ndarray, csv_path: Path, size: int) -> np.ndarray:
    if pred["path"] is not None:
        refs = []
        for i in picks:
            index = None if pred["index"] is None or pred["index"][i] < 0 else int(pred["index"][i])
            refs.append(PatchRef(Path(pred["path"][i]), index))
        return np.concatenate(list(read_batches(refs, 256, size)))
    from pcam_jax.config_base import config_from_json
    from pcam_jax.train import make_source

    workdir, split, _ = _eval_csv_context(csv_path)
    source = make_source(config_from_json(workdir / "config.json"), split)
    return np.stack([source.read_image(int(pred["index"][i])) for i in picks])


def explain_predictions(csv_path: Path, out: Path, model_spec: str | None) -> dict[str, int]:
    """gallery.png and gallery.csv for a predictions CSV; returns the row sizes."""
    methods = parse_methods(_METHOD.value)
    pred = explain.read_predictions(csv_path)
    labels = pred["label"] if np.all(pred["label"] >= 0) else None
    rows = explain.gallery_selection(pred["p_tumour"], labels, _PER_ROW.value)
    picks = np.unique(np.concatenate([v for v in rows.values()] + [np.zeros(0, int)]))
    checkpoint = _CHECKPOINT.value
    if model_spec is None and pred["path"] is None:
        workdir, _, step = _eval_csv_context(csv_path)
        model_spec, checkpoint = str(workdir), str(step) if step is not None else checkpoint
    model = inference.load_model(model_spec, checkpoint)
    images = _read_gallery_images(pred, picks, csv_path, model.patch_size)
    position = {int(i): k for k, i in enumerate(picks)}
    local = {name: np.array([position[int(i)] for i in idx], int) for name, idx in rows.items()}
    maps = _maps(model, images, methods[:1])[methods[0]]
    p = pred["p_tumour"][picks]
    lab = None if labels is None else labels[picks]
    with atomic_dir(out) as tmp:
        explain.save_gallery(
            tmp / "gallery.png",
            images,
            maps,
            p,
            lab,
            local,
            methods[0],
            title=f"{csv_path.name}: {methods[0].replace('_', ' ')} maps",
            dpi=_DPI.value,
        )
        with open(tmp / "gallery.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["row", "rank", "csv_row", "label", "p_tumour"])
            for name, idx in rows.items():
                for rank, i in enumerate(idx):
                    writer.writerow(
                        [
                            name,
                            rank,
                            int(i),
                            int(pred["label"][i]),
                            repr(float(pred["p_tumour"][i])),
                        ]
                    )
    return {name: len(v) for name, v in rows.items()}


def explain_group(inputs: Sequence[str], out: Path, model: inference.LoadedModel) -> dict:
    """filters.png (group models) and orbit.png for one patch; returns the orbit's figures."""
    refs = collect_inputs(inputs)
    if len(refs) != 1:
        raise InputError(f"--group_views takes one patch; INPUT names {len(refs)}")
    image = next(read_batches(refs, 1, model.patch_size))[0]
    layer = _LAYER.value or default_gradcam_layer(model.model, model.variables, model.patch_size)
    views = explain.orbit_views(model, image, layer, _TRANSFORM.value)
    group = views["group"]
    with atomic_dir(out) as tmp:
        if group != "z2":
            poses = explain.lifting_filter_poses(model)
            explain.save_filter_poses(tmp / "filters.png", poses, group)
        explain.save_orbit(tmp / "orbit.png", views)
    return {
        "group": group,
        "layer": layer,
        "h": views["h"],
        "relative_max_difference": views["relative_max_difference"],
    }


def main(argv: Sequence[str]) -> None:
    inputs = argv[1:]
    if not _OUT.value or not (inputs or _PREDICTIONS.value):
        sys.exit("pcam-explain: error: give INPUT... or --predictions=FILE.csv, and --out=DIR")
    out = Path(_OUT.value)
    try:
        check_new_dir(out, InputError)
        if _PREDICTIONS.value:
            if inputs:
                raise InputError("give either INPUT... or --predictions, not both")
            sizes = explain_predictions(Path(_PREDICTIONS.value), out, _MODEL.value)
            print(f"pcam-explain: gallery {sizes} -> {out / 'gallery.png'}")
            return
        model = inference.load_model(_MODEL.value, _CHECKPOINT.value)
        if _GROUP_VIEWS.value:
            info = explain_group(inputs, out, model)
            print(
                f"pcam-explain: {info['group']} model, layer {info['layer']}, h={info['h']}: "
                f"max |f(T_h x) - L_h f(x)| / max|f| = {info['relative_max_difference']:.2e} "
                f"-> {out}"
            )
            return
        n = explain_patches(inputs, out, model)
    except (PcamError, OSError) as e:
        sys.exit(f"pcam-explain: error: {e}")
    print(f"pcam-explain: {n} panels -> {out}")


def run() -> None:
    """Console-script entry point."""
    run_binary(main, __doc__, [__name__])


if __name__ == "__main__":
    run()
