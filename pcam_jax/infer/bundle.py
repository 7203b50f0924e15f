"""Model bundles: the self-contained format pcam-export writes and every binary reads, and
its card.

A bundle is a directory with ``bundle.json`` (model fields, normalisation statistics, input
size, resolution, metrics, provenance), ``variables.msgpack`` (the weights, checksummed in
bundle.json) and ``MODEL.md`` (the card: what the model is, its input, training data and
recipe, metrics, intended use and limits, and that it is not a medical device). A bundle needs
no training data, no optimizer state and no Orbax; its ``format_version`` must be one this
version reads (BUNDLE_FORMAT_VERSION), else ModelError says which versions differ.
Weights may be stored as float16 (``storage_dtype``; pcam-export checks what that moves first)
and are cast back to the model's dtype when loaded.

The package ships more than one bundle (BUNDLED_MODELS, by name): ``--model=bundled`` (or no
``--model``) is DEFAULT_BUNDLED (pcam-slide's: DEFAULT_SLIDE_BUNDLED), ``--model=bundled:NAME``
another one.
``save_bundle`` writes one all or nothing (``runtime.files.atomic_dir``); ``load_bundle`` checks
the format, the checksum and that the weights fit the model. Imports: infer.model/predict,
config, data, runtime, errors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax import __version__, models
from pcam_jax.config import flatten_config
from pcam_jax.data import pipeline, sources
from pcam_jax.errors import ModelError
from pcam_jax.infer.model import abstract_variables, count_parameters, create_model, make_preprocess
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.distributed import make_mesh
from pcam_jax.runtime.files import atomic_dir, check_new_dir, write_json

BUNDLE_FORMAT = "pcam_jax.bundle"
#: The bundle layout this version writes and reads; a change to bundle.json's meaning or to the
#: variables' encoding increments it.
BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
BUNDLE_VARIABLES = "variables.msgpack"
BUNDLE_CARD = "MODEL.md"
#: How a bundle may store its floating-point weights (they are cast back when loaded).
STORAGE_DTYPES = ("float32", "float16")
_BUNDLED_ROOT = Path(__file__).resolve().parents[1] / "bundled"
#: The models shipped inside the package, by name (``--model=bundled:NAME``): the fine-tuned
#: ImageNet EfficientNet-Lite0 (the best single model on valid), the p4 ResNet (exactly
#: invariant to quarter turns) and the p4 ResNet without padding (invariant too, and its dense
#: slide map equals its windows: what ``pcam-slide`` runs densely by default).
BUNDLED_MODELS = {
    "effnet-lite0": _BUNDLED_ROOT / "effnet_lite0",
    "p4resnet": _BUNDLED_ROOT / "p4resnet",
    "p4resnet-valid": _BUNDLED_ROOT / "p4resnet_valid",
}
#: The bundle ``load_model(None)`` and ``--model=bundled`` load.
DEFAULT_BUNDLED = "effnet-lite0"
#: The bundle pcam-slide loads when ``--model`` is left out: the one whose dense slide map
#: equals its windows, so that ``--mode=auto`` runs it densely (BENCHMARKS.md, "Whole-slide
#: inference" and "Bundled models" measure why).
DEFAULT_SLIDE_BUNDLED = "p4resnet-valid"
BUNDLED_MODEL = BUNDLED_MODELS[DEFAULT_BUNDLED]


def _flat_leaves(tree: Any) -> dict[str, Any]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def stored_variables(variables: Any, storage_dtype: str = "float32") -> Any:
    """`variables` on the host as a bundle stores them: floating-point leaves in
    `storage_dtype` (one of STORAGE_DTYPES), the others unchanged."""
    if storage_dtype not in STORAGE_DTYPES:
        raise ModelError(f"storage dtype {storage_dtype!r}: use one of {', '.join(STORAGE_DTYPES)}")

    def store(x: Any) -> np.ndarray:
        a = np.asarray(jax.device_get(x))
        return a.astype(storage_dtype) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree_util.tree_map(store, variables)


def save_bundle(
    loaded: LoadedModel,
    out: str | Path,
    *,
    card: str,
    extra: dict[str, Any] | None = None,
    storage_dtype: str = "float32",
) -> Path:
    """Writes `loaded` as a bundle directory `out` (which must not exist yet): bundle.json,
    variables.msgpack (floating-point weights as `storage_dtype`) and MODEL.md (`card`).
    Written under a temporary name and renamed, so a failure leaves nothing at `out`. Returns
    `out`."""
    out = check_bundle_out(out)
    host = stored_variables(loaded.variables, storage_dtype)
    blob = serialization.msgpack_serialize(host)
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "pcam_jax_version": __version__,
        **loaded.info,
        **(extra or {}),
        "classes": ["normal", "tumour"],
        "variables_sha256": hashlib.sha256(blob).hexdigest(),
        "storage_dtype": storage_dtype,
        "parameters": count_parameters(host),
    }
    with atomic_dir(out, replace_empty=False) as tmp:
        (tmp / BUNDLE_VARIABLES).write_bytes(blob)
        write_json(tmp / BUNDLE_JSON, meta, sort_keys=True)
        (tmp / BUNDLE_CARD).write_text(card)
    return out


def check_bundle_out(out: str | Path) -> Path:
    """Checks that bundle directory `out` can be created: absent, its parent an existing,
    writable folder. Raises ModelError naming it otherwise."""
    return check_new_dir(out, ModelError, empty_ok=False)


def read_bundle_json(path: str | Path) -> dict[str, Any]:
    """bundle.json of bundle directory `path`, checked for format and version."""
    path = Path(path)
    meta_path = path / BUNDLE_JSON
    if not meta_path.is_file():
        raise ModelError(
            f"{path}: not a model bundle (no {BUNDLE_JSON}); make one with pcam-export"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{meta_path}: not valid JSON ({e}); export the bundle again") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{meta_path}: not a pcam_jax bundle (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise ModelError(
            f"{path}: bundle format version {version} (written by pcam_jax "
            f"{meta.get('pcam_jax_version', '?')}); this pcam_jax {__version__} reads version "
            f"{BUNDLE_FORMAT_VERSION}. Export it again from its workdir with this version, or "
            f"install the pcam_jax that wrote it."
        )
    for key in ("model", "norm", "patch_size", "mpp", "compute_dtype", "variables_sha256"):
        if key not in meta:
            raise ModelError(f"{meta_path}: field {key!r} missing; export the bundle again")
    return meta


def load_bundle(path: str | Path) -> LoadedModel:
    """The model of bundle directory `path` (see the module docstring)."""
    path = Path(path)
    meta = read_bundle_json(path)
    blob_path = path / BUNDLE_VARIABLES
    if not blob_path.is_file():
        raise ModelError(f"{blob_path}: missing; the bundle is incomplete, export it again")
    blob = blob_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta["variables_sha256"]:
        raise ModelError(f"{blob_path}: checksum differs from {BUNDLE_JSON}; the file is damaged")
    config = ml_collections.ConfigDict(
        {"model": meta["model"], "compute_dtype": meta["compute_dtype"]}
    )
    model = create_model(config)
    abstract = abstract_variables(model, models.input_size(config.model.name))
    try:
        host = serialization.msgpack_restore(blob)
    except Exception as e:  # msgpack raises several types on a damaged file
        raise ModelError(f"{blob_path}: not readable ({e}); export the bundle again") from None
    host = {"params": host.get("params", {}), "batch_stats": host.get("batch_stats", {})}
    want, got = _flat_leaves(abstract), _flat_leaves(host)
    bad = sorted(
        k
        for k in set(want) | set(got)
        if k not in want or k not in got or tuple(want[k].shape) != np.shape(got[k])
    )
    if bad:
        raise ModelError(
            f"{path}: the weights do not fit model {config.model.name!r} as this pcam_jax "
            f"{__version__} builds it ({len(bad)} differ, e.g. {bad[0]}); the bundle was "
            f"written by pcam_jax {meta.get('pcam_jax_version', '?')}"
        )
    variables = jax.tree_util.tree_map(lambda a, s: jnp.asarray(a, s.dtype), host, abstract)
    variables = jax.device_put(variables, NamedSharding(make_mesh(), P()))
    norm = pipeline.NormStats.from_json(meta["norm"])
    info = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    info["source"] = {**meta.get("source", {}), "bundle": str(path.resolve())}
    return LoadedModel(config, model, variables, make_preprocess(config, norm), info)


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
    parts = []
    for role, split in (("train", config.data.train_split), ("validation", config.data.eval_split)):
        try:
            size = f" ({len(sources.from_config(config, split)):,} patches)"
        except Exception:  # the data moved or is gone: the card still gets written
            size = ""
        parts.append(f"{role} split `{split}`{size}")
    return ", ".join(parts)


def _norm_source(c: Any) -> str:
    if c.data.get("normalization") == "imagenet":
        return "ImageNet's (the pretrained backbone's)"
    return "the training split's"


def _data_fingerprint(loaded: LoadedModel) -> str:
    """ "; FINGERPRINT" of the training split when the normalisation statistics recorded one
    (ImageNet's statistics come from no split of this data)."""
    if loaded.config.data.get("normalization") == "imagenet":
        return ""
    return f"; {loaded.info['norm'].get('fingerprint') or 'no fingerprint'}"


def _init_line(c: Any) -> str:
    frozen = c.model.get("frozen_blocks", 0)
    scale = c.optimizer.get("backbone_lr_scale", 1.0)
    return (
        f"- initialised from `{c.init_from}` (ImageNet weights), then fine-tuned"
        + (f" with its first {frozen} blocks frozen" if frozen else "")
        + (f", the backbone at {scale}x the head's learning rate" if scale != 1.0 else "")
    )


def _storage_lines(storage: dict[str, Any] | None) -> list[str]:
    if not storage or storage.get("dtype", "float32") == "float32":
        return []
    return [
        f"Weights are stored as {storage['dtype']} and cast back to float32 when loaded: on "
        f"the {storage['n']} patches of the `{storage['split']}` split, p(tumour) moves by at "
        f"most {storage['max_abs_dp']:.1e} from the float32 weights' "
        f"(pcam-export refuses above {storage['tolerance']:g}).",
        "",
    ]


def model_card(loaded: LoadedModel, metrics: dict[str, dict[str, Any]]) -> str:
    """MODEL.md of a bundle: model, data, recipe, metrics, input, intended use, limits;
    ``loaded.info["source"]`` as ``export.portable_provenance`` leaves it (run, dataset,
    exported, commit)."""
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
    if c.get("init_from"):
        recipe.insert(0, _init_line(c))
    distill = c.get("distill", {})
    if distill.get("weight", 0) > 0:
        views = "the mean of its 8 D4 views" if distill.get("tta", True) else "one view"
        recipe.append(
            f"- distilled from `{distill.teacher}`: loss {1 - distill.weight:g} x the labels' + "
            f"{distill.weight:g} x the cross-entropy against that model's p(tumour) ({views}) "
            "on each training patch"
        )
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
        f"{loaded.mpp} um/px (PCam: level 2 of CAMELYON16's 40x scans), normalised with "
        f"{_norm_source(c)} per-channel mean {_rounded(loaded.info['norm']['mean'])} and std "
        f"{_rounded(loaded.info['norm']['std'])} (done by the model's loader)",
        "- output: softmax over (normal, tumour); p(tumour) is the second entry",
        "",
        "## Training data",
        f"- dataset `{src['dataset']}` (source `{c.data.source}`{_data_fingerprint(loaded)}): "
        f"{_split_sizes(c)}",
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
        *_storage_lines(loaded.info.get("storage")),
        "## Use",
        "```",
        "pcam-predict PATCHES... --model=THIS_DIR --out=predictions.csv",
        "pcam-slide SLIDE.svs --model=THIS_DIR --out=slide_outputs/",
        "```",
        "",
        "## Provenance",
        f"- exported by pcam_jax {__version__} on "
        f"{src['exported']} from the run `{src['run']}` (code at commit "
        f"{src.get('commit') or 'unknown'}), checkpoint {src['step']} ({src['weights']} weights)",
        f"- bundle format version {BUNDLE_FORMAT_VERSION}",
        "",
    ]
    return "\n".join(lines)
