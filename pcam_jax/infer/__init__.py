"""Inference: a trained model from a workdir or bundle, run on patches and splits.

Owns: the model a config builds and its device-side input transform (``model``), the one
predict path that training's validation and every binary share (``predict``: ``predict``,
``make_predict_fn``, ``LoadedModel``), loading (``load``: workdirs, bundles, the bundled model),
the bundle format and its card (``bundle``), pcam-export (``export``), pcam-eval (``evaluate``),
the metrics (``metrics``) and pcam-predict (``patches``). Whole slides are ``pcam_jax.wsi``'s.
Imports: models, data, config, workdir, runtime, errors; never ``pcam_jax.train``.

The names most callers need are importable from here::

    from pcam_jax import infer
    model = infer.load_model("models/my_bundle")  # or a workdir, "bundled:p4resnet", None
    p = model.predict_images(uint8_patches, tta=True)
"""

from pcam_jax.infer.bundle import (
    BUNDLE_CARD,
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    BUNDLE_JSON,
    BUNDLE_VARIABLES,
    BUNDLED_MODEL,
    BUNDLED_MODELS,
    DEFAULT_BUNDLED,
    DEFAULT_SLIDE_BUNDLED,
    load_bundle,
    read_bundle_json,
    save_bundle,
)
from pcam_jax.infer.load import load_model, load_workdir
from pcam_jax.infer.model import (
    PCAM_MPP,
    Preprocess,
    abstract_variables,
    cast_floats,
    count_parameters,
    create_model,
    make_preprocess,
    split_outputs,
)
from pcam_jax.infer.predict import (
    LoadedModel,
    check_patches,
    make_eval_loader,
    make_predict_fn,
    pad_to_local_devices,
    predict,
)

__all__ = [
    "BUNDLED_MODEL",
    "BUNDLED_MODELS",
    "DEFAULT_BUNDLED",
    "DEFAULT_SLIDE_BUNDLED",
    "BUNDLE_CARD",
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_VERSION",
    "BUNDLE_JSON",
    "BUNDLE_VARIABLES",
    "PCAM_MPP",
    "LoadedModel",
    "Preprocess",
    "abstract_variables",
    "cast_floats",
    "check_patches",
    "count_parameters",
    "create_model",
    "load_bundle",
    "load_model",
    "load_workdir",
    "make_eval_loader",
    "make_predict_fn",
    "make_preprocess",
    "pad_to_local_devices",
    "predict",
    "read_bundle_json",
    "save_bundle",
    "split_outputs",
]
