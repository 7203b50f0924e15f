"""Prediction: p(tumour) of uint8 patches, the one path every binary and training share.

Inputs are uint8 RGB patches (N, 96, 96, 3) as stored in PCam; the output is
p(tumour) = softmax(logits)[:, 1], float32 (N,). ``make_predict_fn`` is jit(shard_map) over the
1-D mesh of every device (axis ``data``): each device predicts its slice of the batch, the
variables are replicated. With ``tta`` the probabilities are averaged over the 8 D4 transforms
of each patch; for p4m models that changes nothing beyond float rounding (they are invariant),
for p4 models it averages the mirror, for plain models all 8. ``predict`` runs over a grain
loader (several processes: each reads its share and all get every prediction, in index order);
``LoadedModel`` (a module, its replicated variables, its Preprocess and metadata) predicts
in-memory arrays in one process. Imports: infer.model, data.pipeline, runtime, errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from functools import partial
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from pcam_jax.data import pipeline
from pcam_jax.errors import DataError, ModelError
from pcam_jax.infer.model import Preprocess, cast_floats, split_outputs
from pcam_jax.runtime.distributed import AXIS, make_mesh, to_global
from pcam_jax.runtime.xla_options import compiler_options


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
    return pad_rows(images, n + (-n) % jax.local_device_count())


def pad_rows(x: np.ndarray, rows: int, fill: Any = 0) -> np.ndarray:
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
        p = predict_fn(variables, to_global(mesh, pad_rows(batch["image"], width)))
        out["p_tumour"].append(np.asarray(multihost_utils.process_allgather(p, tiled=True)))
        for key, fill in (("index", -1), ("label", 0)):
            local = pad_rows(np.asarray(batch[key]), width, fill)
            out[key].append(np.asarray(multihost_utils.process_allgather(local, tiled=True)))
    got = {k: np.concatenate(v) for k, v in out.items()}
    order = np.argsort(got["index"], kind="stable")
    order = order[got["index"][order] >= 0]  # drop the padding
    return {k: v[order] for k, v in got.items()}


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
    # functions other layers compile for this model, by their own keys (explain's attribution
    # methods, wsi's dense pass), so that a second call does not compile again
    compiled_fns: dict[tuple, Any] = dataclasses.field(default_factory=dict, repr=False)

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

        One process: the batches are split over its local devices. A batch holds ``batch_size``
        rows (rounded up to the device count); a shorter last one is padded only to the device
        count, so memory follows the input (one more compile for that shape).
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
        devices = jax.local_device_count()
        width = batch_size + (-batch_size) % devices
        fn = self.predict_fn(mesh, tta)

        def fetch(dispatched: list[tuple[Any, int]]) -> np.ndarray:
            parts = [np.asarray(p)[:n] for p, n in dispatched]
            return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

        previous: list[tuple[Any, int]] | None = None
        for images in batches:
            check_patches(images, self)
            current = []
            for lo in range(0, len(images), width):
                chunk = images[lo : lo + width]
                rows = len(chunk) + (-len(chunk)) % devices  # a short chunk pads only to this
                current.append(
                    (fn(self.variables, to_global(mesh, pad_rows(chunk, rows))), len(chunk))
                )
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
