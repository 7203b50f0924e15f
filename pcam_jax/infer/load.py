"""Loading a trained model: from a pcam-train workdir, a bundle, or the bundled model.

``load_model(spec)`` takes a bundle directory (``pcam_jax.infer.bundle``), a pcam-train workdir
(its config.json and one checkpoint: best, last or a step; the EMA weights when the run kept
them, unless weights="raw"), or None / "bundled" for the model shipped in pcam_jax/bundled/, and
returns a ``LoadedModel`` ready to predict. Imports: workdir, infer.model/predict/bundle, data.
"""

from __future__ import annotations

from pathlib import Path

from pcam_jax import models
from pcam_jax import workdir as workdir_layout
from pcam_jax.data import pipeline
from pcam_jax.errors import ModelError
from pcam_jax.infer.bundle import BUNDLE_JSON, BUNDLED_MODELS, DEFAULT_BUNDLED, load_bundle
from pcam_jax.infer.model import PCAM_MPP, abstract_variables, create_model, make_preprocess
from pcam_jax.infer.predict import LoadedModel


def load_workdir(
    workdir: str | Path, checkpoint: str = "best", weights: str = "ema"
) -> LoadedModel:
    """The model of a pcam-train workdir at `checkpoint` (best, last or a step).

    weights: "ema" (the EMA when the checkpoint holds it, else the raw weights) or "raw".
    ``info["weights"]`` says which came back, ``info["metrics"]["valid"]`` the checkpoint's
    validation metrics (when it was evaluated).
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ModelError(f"{workdir}: directory not found (expected a pcam-train --workdir)")
    config = workdir_layout.read_config(workdir)
    mngr = workdir_layout.checkpoint_manager(workdir, config.keep_checkpoints)
    try:
        step = workdir_layout.resolve_checkpoint(mngr, checkpoint)
        model = create_model(config)
        size = models.input_size(config.model.name)
        variables, record = workdir_layout.restore_model(
            mngr, step, abstract_variables(model, size), weights
        )
    finally:
        mngr.close()
    norm = pipeline.NormStats.from_json(record["norm"])
    info = {
        "model": config.model.to_dict(),
        "compute_dtype": config.compute_dtype,
        "patch_size": 96,
        "mpp": PCAM_MPP,
        "norm": norm.to_json(),
        "metrics": {"valid": record["val"]} if record.get("val") else {},
        "source": {
            "workdir": str(workdir.resolve()),
            "step": step,
            "weights": record["weights"],
            "seed": record.get("seed"),
            "num_train_steps": record.get("num_train_steps"),
        },
    }
    return LoadedModel(config, model, variables, make_preprocess(config, norm), info)


def load_model(
    spec: str | Path | None, checkpoint: str = "best", weights: str = "ema"
) -> LoadedModel:
    """A bundle directory, a pcam-train workdir (at `checkpoint`, `weights`), or a model
    shipped with pcam_jax: None or "bundled" for the default one, "bundled:NAME" for the one of
    that name (``bundle.BUNDLED_MODELS``)."""
    if spec is None or str(spec).startswith("bundled:") or str(spec) == "bundled":
        name = DEFAULT_BUNDLED if spec is None else (str(spec).partition(":")[2] or DEFAULT_BUNDLED)
        if name not in BUNDLED_MODELS:
            raise ModelError(
                f"--model={spec}: no bundled model of that name; the bundled models are "
                + ", ".join(f"bundled:{n}" for n in BUNDLED_MODELS)
            )
        path = BUNDLED_MODELS[name]
        if not (path / BUNDLE_JSON).is_file():
            raise ModelError(f"{path}: the bundled model {name!r} is missing from this install")
        return load_bundle(path)
    path = Path(spec)
    if (path / BUNDLE_JSON).is_file():
        return load_bundle(path)
    if workdir_layout.is_workdir(path):
        return load_workdir(path, checkpoint, weights)
    raise ModelError(
        f"--model={spec}: neither a model bundle ({BUNDLE_JSON}) nor a pcam-train workdir "
        "(config.json); give one of those, or leave --model out for the bundled model"
    )
