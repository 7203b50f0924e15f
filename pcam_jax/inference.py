"""Loading a trained model and running it on patches: what pcam-eval, pcam-predict, pcam-slide
and pcam-export share.

A model is loaded from either

* a training workdir (``load_workdir``): its config.json and one checkpoint (best, last or a
  step; the EMA weights when the run kept them, unless weights="raw"), or
* a model bundle (``load_bundle``, written by ``save_bundle`` / pcam-export): a directory with
  ``bundle.json`` (model fields, normalisation statistics, input size, resolution, metrics,
  provenance), ``variables.msgpack`` (the weights) and ``MODEL.md`` (the card). A bundle needs no
  training data, no optimizer state and no Orbax; its ``format_version`` must be one this
  version reads (BUNDLE_FORMAT_VERSION), else ModelError says which versions differ.

``load_model(spec)`` takes either (or None: the bundled model shipped in pcam_jax/bundled/) and
returns a ``LoadedModel``: the flax module, its variables replicated over the mesh, the
device-side ``Preprocess`` (normalise, resize for Inception, cast) and the metadata.

Prediction. Inputs are uint8 RGB patches (N, 96, 96, 3) as stored in PCam; the output is
p(tumour) = softmax(logits)[:, 1], float32 (N,). ``make_predict_fn`` is jit(shard_map) over the
1-D mesh of every device (axis ``data``): each device predicts its slice of the batch, the
variables are replicated. With ``tta`` the probabilities are averaged over the 8 D4 transforms
of each patch; for p4m models that changes nothing beyond float rounding (they are invariant),
for p4 models it averages the mirror, for plain models all 8. ``predict`` runs over a grain
loader (several processes: each reads its share and all get every prediction, in index order);
``LoadedModel.predict_images`` over an in-memory array, in one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization, struct
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax import __version__, models
from pcam_jax.checkpoints import checkpoint_manager, resolve_checkpoint, restore_model
from pcam_jax.config_base import config_from_json
from pcam_jax.data import pipeline
from pcam_jax.data.pcam_format import DataError
from pcam_jax.distributed import AXIS, make_mesh, to_global
from pcam_jax.errors import ModelError
from pcam_jax.xla_options import compiler_options

#: Microns per pixel of PCam's patches: level 2 of CAMELYON16's 40x scans (0.243 um/px x 4).
PCAM_MPP = 0.972
BUNDLE_FORMAT = "pcam_jax.bundle"
#: The bundle layout this version writes and reads; a change to bundle.json's meaning or to the
#: variables' encoding increments it.
BUNDLE_FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
BUNDLE_VARIABLES = "variables.msgpack"
BUNDLE_CARD = "MODEL.md"
#: The model shipped inside the package; ``load_model(None)`` loads it.
BUNDLED_MODEL = Path(__file__).resolve().parent / "bundled" / "pcam_subset"


@struct.dataclass
class Preprocess:
    """Device-side input transform: normalise, resize (Inception), cast."""

    mean: tuple[float, ...] = struct.field(pytree_node=False)
    std: tuple[float, ...] = struct.field(pytree_node=False)
    size: int = struct.field(pytree_node=False, default=96)
    dtype: Any = struct.field(pytree_node=False, default=jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = pipeline.normalize(images, self.mean, self.std)
        if self.size != x.shape[1]:
            x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[3]), "bilinear")
        return x.astype(self.dtype)


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The model named by config.model.name with the other model.* fields as overrides."""
    overrides = {k: v for k, v in config.model.items() if k != "name"}
    try:
        model = models.create(config.model.name, **overrides)
    except (ValueError, TypeError) as e:
        raise ModelError(f"config.model: {e}") from e
    if "axis_name" in {f.name for f in dataclasses.fields(model)} and "axis_name" not in overrides:
        model = model.clone(axis_name=AXIS)  # BatchNorm statistics over the whole global batch
    return model


def make_preprocess(config: ml_collections.ConfigDict, norm: pipeline.NormStats) -> Preprocess:
    """The device-side input transform of `config` with normalisation statistics `norm`."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.compute_dtype not in dtypes:
        raise ModelError(
            f"config.compute_dtype={config.compute_dtype!r}: expected float32 or bfloat16"
        )
    size = models.input_size(config.model.name)
    return Preprocess(tuple(norm.mean), tuple(norm.std), size, dtypes[config.compute_dtype])


def split_outputs(out: Any) -> tuple[jax.Array, jax.Array | None]:
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Casts floating leaves to the compute dtype (a no-op for float32); masters stay float32."""
    if dtype == jnp.float32:
        return tree
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def predict_step(
    variables: dict[str, Any],
    images: jax.Array,
    *,
    apply_fn: Any,
    preprocess: Preprocess,
    tta: bool,
) -> jax.Array:
    """p(tumour) (B,) of this device's images; with tta, averaged over the 8 D4 transforms."""
    x = preprocess(images)
    variables = {**variables, "params": cast_floats(variables["params"], preprocess.dtype)}
    views = [x]
    if tta:
        views = [
            jnp.flip(jnp.rot90(x, k, axes=(1, 2)), axis=2) if flip else jnp.rot90(x, k, axes=(1, 2))
            for k in range(4)
            for flip in (False, True)
        ]
    probs = [
        jax.nn.softmax(split_outputs(apply_fn(variables, v, train=False))[0], -1) for v in views
    ]
    return jnp.mean(jnp.stack(probs), axis=0)[:, 1].astype(jnp.float32)


def make_predict_fn(
    model: nn.Module, preprocess: Preprocess, mesh: jax.sharding.Mesh, tta: bool = False
) -> Any:
    """jit(shard_map(predict_step)): (variables, global images) -> global p(tumour)."""
    fn = partial(predict_step, apply_fn=model.apply, preprocess=preprocess, tta=tta)
    return jax.jit(
        jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS)),
        compiler_options=compiler_options(),
    )


def make_eval_loader(config: ml_collections.ConfigDict, source: Any) -> grain.DataLoader:
    """One pass over `source` in order; each process reads a contiguous share of it.

    config.eval_batch_size is the global batch: each of P processes reads
    ceil(eval_batch_size / P) patches per batch.
    """
    if len(source) < jax.process_count():
        raise DataError(
            f"{source.name}/{source.split} holds {len(source)} patches, fewer than the "
            f"{jax.process_count()} processes"
        )
    return pipeline.make_loader(
        source,
        batch_size=-(-config.eval_batch_size // jax.process_count()),
        train=False,
        read_threads=config.data.read_threads,
        shard_options=pipeline.process_shard_options(drop_remainder=False),
    )


def pad_to_local_devices(images: np.ndarray) -> np.ndarray:
    """images padded along axis 0 to a multiple of the local device count."""
    n = images.shape[0]
    return _pad_rows(images, n + (-n) % jax.local_device_count())


def _pad_rows(x: np.ndarray, rows: int, fill: Any = 0) -> np.ndarray:
    """x padded along axis 0 to `rows` rows with `fill`."""
    pad = np.full((rows - x.shape[0], *x.shape[1:]), fill, x.dtype)
    return np.concatenate([x, pad]) if len(pad) else x


def predict(
    predict_fn: Any,
    variables: dict[str, Any],
    loader: grain.DataLoader,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """Runs `predict_fn` over an eval loader; returns index, label, p_tumour for every patch.

    Each batch is padded to a multiple of the local device count and the
    padding dropped. With several processes every process reads its share
    (see `make_eval_loader`); each round the processes agree on a common batch
    width (a process whose share is done sends padding), and the predictions
    of all of them are gathered, so every process returns the whole split in
    index order.
    """
    local_devices = jax.local_device_count()
    out: dict[str, list[np.ndarray]] = {"index": [], "label": [], "p_tumour": []}
    if jax.process_count() == 1:
        for batch in loader:
            n = batch["label"].shape[0]
            images = pad_to_local_devices(batch["image"])
            p = np.asarray(predict_fn(variables, to_global(mesh, images)))[:n]
            out["index"].append(np.asarray(batch["index"]))
            out["label"].append(np.asarray(batch["label"]))
            out["p_tumour"].append(p)
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}

    it = iter(loader)
    last: dict[str, np.ndarray] | None = None
    while True:
        batch = next(it, None)
        n = 0 if batch is None else batch["label"].shape[0]
        widest = int(multihost_utils.process_allgather(np.asarray(n)).max())
        if widest == 0:
            break
        width = widest + (-widest) % local_devices
        if batch is None:  # this process's share is done: an empty batch like the last one
            if last is None:
                raise DataError("a process received no eval records; use fewer processes")
            batch = {k: np.zeros((0, *v.shape[1:]), v.dtype) for k, v in last.items()}
        last = {k: np.asarray(batch[k]) for k in ("image", "label", "index")}
        p = predict_fn(variables, to_global(mesh, _pad_rows(batch["image"], width)))
        out["p_tumour"].append(np.asarray(multihost_utils.process_allgather(p, tiled=True)))
        for key, fill in (("index", -1), ("label", 0)):
            local = _pad_rows(np.asarray(batch[key]), width, fill)
            out[key].append(np.asarray(multihost_utils.process_allgather(local, tiled=True)))
    got = {k: np.concatenate(v) for k, v in out.items()}
    order = np.argsort(got["index"], kind="stable")
    order = order[got["index"][order] >= 0]  # drop the padding
    return {k: v[order] for k, v in got.items()}


# --- loaded models ---------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
    """A model ready to predict: module, variables (replicated over the mesh), preprocess, and
    ``info`` (the metadata a bundle stores: model fields, mpp, input_size, norm, metrics,
    source)."""

    config: ml_collections.ConfigDict
    model: nn.Module
    variables: dict[str, Any]
    preprocess: Preprocess
    info: dict[str, Any]
    _predict_fns: dict[bool, Any] = dataclasses.field(default_factory=dict, repr=False)
    # compiled attribution functions (pcam_jax.attribution.attribute), per method and settings
    attribution_fns: dict[tuple, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def mpp(self) -> float:
        """Microns per pixel of the patches the model was trained on."""
        return float(self.info["mpp"])

    @property
    def patch_size(self) -> int:
        """Side of the uint8 patches it takes (96; the model may resize them inside)."""
        return int(self.info["patch_size"])

    def predict_fn(self, mesh: jax.sharding.Mesh, tta: bool = False) -> Any:
        """The compiled (variables, global images) -> p(tumour) function (cached per tta)."""
        if tta not in self._predict_fns:
            self._predict_fns[tta] = make_predict_fn(self.model, self.preprocess, mesh, tta)
        return self._predict_fns[tta]

    def predict_images(
        self, images: np.ndarray, *, batch_size: int = 256, tta: bool = False
    ) -> np.ndarray:
        """p(tumour), float32 (N,), of uint8 patches (N, patch_size, patch_size, 3).

        One process: the batches are split over its local devices. Every batch is padded to
        ``batch_size`` rows (a multiple of the device count), so the function compiles once.
        """
        return next(self.predict_batches([images], batch_size=batch_size, tta=tta))

    def predict_batches(
        self, batches: Iterable[np.ndarray], *, batch_size: int = 256, tta: bool = False
    ) -> Iterator[np.ndarray]:
        """p(tumour) float32 (len(a),) for each array `a` of patches in `batches`, in order.

        A stream: an array's device batches are dispatched before the previous array's
        results are fetched, so reading the next input overlaps the computation.
        """
        if jax.process_count() > 1:
            raise ModelError("predicting from arrays runs in one process; use pcam-eval's loader")
        mesh = make_mesh()
        width = batch_size + (-batch_size) % jax.local_device_count()
        fn = self.predict_fn(mesh, tta)

        def fetch(dispatched: list[tuple[Any, int]]) -> np.ndarray:
            parts = [np.asarray(p)[:n] for p, n in dispatched]
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

        previous: list[tuple[Any, int]] | None = None
        for images in batches:
            check_patches(images, self)
            current = [
                (
                    fn(self.variables, to_global(mesh, _pad_rows(images[lo : lo + width], width))),
                    len(images[lo : lo + width]),
                )
                for lo in range(0, len(images), width)
            ]
            if previous is not None:
                yield fetch(previous)
            previous = current
        if previous is not None:
            yield fetch(previous)


def check_patches(images: np.ndarray, model: LoadedModel) -> None:
    """Raises ModelError unless `images` is uint8 (N, S, S, 3) with S the model's patch size."""
    s = model.patch_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
        raise ModelError(
            f"patches of dtype {images.dtype} and shape {images.shape}: the model takes uint8 "
            f"RGB (N, {s}, {s}, 3)"
        )


def count_parameters(variables: dict[str, Any]) -> int:
    """Number of trainable parameters (the ``params`` collection) of a variables tree."""
    return int(sum(np.size(v) for v in jax.tree_util.tree_leaves(variables["params"])))


def abstract_variables(model: nn.Module, size: int) -> dict[str, Any]:
    """The {"params", "batch_stats"} tree of `model` as ShapeDtypeStructs (nothing computed)."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((2, size, size, 3), jnp.float32))
    )
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


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
    config = config_from_json(workdir / "config.json")
    mngr = checkpoint_manager(workdir, config.keep_checkpoints)
    try:
        step = resolve_checkpoint(mngr, checkpoint)
        model = create_model(config)
        size = models.input_size(config.model.name)
        variables, record = restore_model(mngr, step, abstract_variables(model, size), weights)
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


def _flat_leaves(tree: Any) -> dict[str, Any]:
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def save_bundle(
    loaded: LoadedModel, out: str | Path, *, card: str, extra: dict[str, Any] | None = None
) -> Path:
    """Writes `loaded` as a bundle directory `out` (which must not exist yet): bundle.json,
    variables.msgpack and MODEL.md (`card`). Written under a temporary name and renamed, so a
    failure leaves nothing at `out`. Returns `out`."""
    out = Path(out)
    if out.exists():
        raise ModelError(f"{out}: already exists; choose a new --out or remove it")
    if not out.parent.is_dir():
        raise ModelError(f"{out.parent}: directory not found (the parent of --out)")
    host = jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), loaded.variables)
    blob = serialization.msgpack_serialize(host)
    meta = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "pcam_jax_version": __version__,
        **loaded.info,
        **(extra or {}),
        "classes": ["normal", "tumour"],
        "variables_sha256": hashlib.sha256(blob).hexdigest(),
        "parameters": count_parameters(host),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / BUNDLE_VARIABLES).write_bytes(blob)
        (tmp / BUNDLE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        (tmp / BUNDLE_CARD).write_text(card)
        tmp.chmod(0o755)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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


def load_model(
    spec: str | Path | None, checkpoint: str = "best", weights: str = "ema"
) -> LoadedModel:
    """A bundle directory, a pcam-train workdir (at `checkpoint`, `weights`) or, for None or
    "bundled", the model shipped with pcam_jax."""
    if spec is None or str(spec) == "bundled":
        if not (BUNDLED_MODEL / BUNDLE_JSON).is_file():
            raise ModelError(f"{BUNDLED_MODEL}: the bundled model is missing from this install")
        return load_bundle(BUNDLED_MODEL)
    path = Path(spec)
    if (path / BUNDLE_JSON).is_file():
        return load_bundle(path)
    if (path / "config.json").is_file():
        return load_workdir(path, checkpoint, weights)
    raise ModelError(
        f"--model={spec}: neither a model bundle ({BUNDLE_JSON}) nor a pcam-train workdir "
        "(config.json); give one of those, or leave --model out for the bundled model"
    )
