"""The grain input pipeline: shuffling, augmentation, batching, normalisation.

    source -> IndexSampler (seeded shuffle per epoch over all records)
           -> GlobalBatchSampler (training with several processes or workers:
              deals global batch k, positions [kB, (k+1)B) of the shuffle, so
              that process p gets its slice [kB + pb, kB + (p+1)b))
           -> RandomAugment (training only; per-record rng from grain, so each
              record's augmentation does not depend on the number of workers;
              left out with augment.where=device, where the train step applies
              the same transforms, pcam_jax.data.device_augment)
           -> Batch (drop remainder for training)
    device -> normalize (per-channel (x - mean) / std, the first op of the
              jit-compiled step)

Batches are ``{"image": uint8 (B, 96, 96, 3), "label": int32 (B,), "index": int64 (B,)}``:
pixels stay uint8 until they reach the accelerator, which moves 4x fewer bytes
through the workers' shared memory and to the device than float32 would (on a
2-core host, casting and normalising on the host cost more than reading).
The loader's iterator is checkpointable: ``it.get_state()`` / ``it.set_state()``
resume on exactly the next batch. The global batches (the concatenation of every
process's batch k, in process order) are the same whatever the number of JAX
processes and grain workers, so a run can resume on another layout:
`train_iterator_state` rebuilds the iterator state for it from the step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import flags
from scipy import ndimage

from pcam_jax.data.sources import PatchSource
from pcam_jax.runtime.files import write_json

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Ruifrok & Johnston's stain matrix (rows: haematoxylin, eosin, DAB), as in skimage.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)
RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float32
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ).astype(np.float32)
#: Values of the ``augment.where`` field: where training augmentation runs (see
#: ``pcam_jax.data.device_augment``; RandomAugment below is the host path).
AUGMENT_WHERE: tuple[str, ...] = ("host", "device", "auto")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation; every part off unless set (the `augment.*` config fields).

    d4:             one of the 8 rot90 x flip transforms, uniformly (exact pixel permutation)
    rotate_degrees: extra rotation by U(-a, a) degrees, bilinear, reflect padding
    brightness, contrast, saturation: factors drawn from U(1 - s, 1 + s)
    hue:            hue rotation by U(-h, h) turns (YIQ chroma rotation), h <= 0.5
    hed_sigma, hed_bias: HED stain jitter (Tellez et al. 2018): each stain's optical
                    density scaled by U(1 - sigma, 1 + sigma) and shifted by U(-bias, bias)
    """

    d4: bool = False
    rotate_degrees: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    hed_sigma: float = 0.0
    hed_bias: float = 0.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> AugmentConfig:
        """Builds from a dict or ConfigDict; unknown fields are an error."""
        if cfg is None:
            return cls()
        cfg = dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown augment field(s) {unknown}; known: {sorted(known)}")
        return cls(**cfg)

    @property
    def photometric(self) -> bool:
        """Whether any part changes pixel values (not only their positions)."""
        return any(
            (
                self.rotate_degrees,
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
                self.hed_sigma,
                self.hed_bias,
            )
        )


def d4_transform(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """rot90 by k quarter turns (counter-clockwise) then, if flip, a left-right mirror.

    (H, W, C) -> (H, W, C); an exact permutation of pixels. The 8 (k, flip)
    pairs are the 8 elements of the dihedral group D4.
    """
    out = np.rot90(image, k, axes=(0, 1))
    return out[:, ::-1] if flip else out


def _jitter_colour(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter on float32 RGB in [0, 255]."""
    if cfg.brightness:
        x = x * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    if cfg.contrast:
        gray_mean = float((x @ RGB_TO_YIQ[0]).mean())
        x = (x - gray_mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + gray_mean
    if cfg.saturation:
        gray = (x @ RGB_TO_YIQ[0])[..., None]
        x = (x - gray) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + gray
    if cfg.hue:
        angle = 2 * np.pi * rng.uniform(-cfg.hue, cfg.hue)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)
        x = x @ (YIQ_TO_RGB @ rot @ RGB_TO_YIQ).T
    return x


def hed_jitter(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Scales and shifts the H, E, D optical densities of float32 RGB in [0, 255].

    alpha, beta: (3,) per-stain scale and shift. alpha=1, beta=0 is the identity
    up to float error.
    """
    od = -np.log((x + 1.0) / 256.0)
    hed = od @ HED_FROM_RGB
    od = (hed * alpha + beta) @ RGB_FROM_HED
    return np.exp(-od) * 256.0 - 1.0


def d4_pixel_permutations(shape: tuple[int, ...] = (96, 96, 3)) -> np.ndarray:
    """(8, H*W*C) flat indices, `perm`, of the 8 D4 transforms of an (H, W, C) image.

    ``image.ravel()[perm[2 * k + flip]] == d4_transform(image, k, flip).ravel()``.

    Gathering with a precomputed index moves the image in one pass (~20 us for
    96x96x3 uint8), where copying a rotated or mirrored view of 3-byte pixels
    costs several times more.
    """
    idx = np.arange(int(np.prod(shape))).reshape(shape)
    return np.stack([d4_transform(idx, k, bool(flip)).ravel() for k in range(4) for flip in (0, 1)])


class RandomAugment(grain.transforms.RandomMap):
    """Per-record training augmentation; grain supplies a per-record seeded rng.

    uint8 (96, 96, 3) -> uint8 (96, 96, 3). With only `d4` set the output is an
    exact permutation of the stored pixels; photometric parts are computed in
    float32 and rounded back to uint8.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._d4 = d4_pixel_permutations() if cfg.d4 else None

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        image = element["image"]
        if self._d4 is not None:
            image = np.take(image.ravel(), self._d4[rng.integers(8)]).reshape(image.shape)
        if cfg.photometric:
            x = image.astype(np.float32)
            if cfg.rotate_degrees:
                angle = rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees)
                x = ndimage.rotate(x, angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
            if cfg.hed_sigma or cfg.hed_bias:
                alpha = rng.uniform(1 - cfg.hed_sigma, 1 + cfg.hed_sigma, 3).astype(np.float32)
                beta = rng.uniform(-cfg.hed_bias, cfg.hed_bias, 3).astype(np.float32)
                x = hed_jitter(x, alpha, beta)
            x = _jitter_colour(x, rng, cfg)
            image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return {**element, "image": image}


def normalize(images: Any, mean: Any, std: Any) -> Any:
    """(images - mean) / std per channel, as float32.

    images: (..., 3) uint8 or float pixels in [0, 255], a numpy or jax array (the
    same code runs inside a jit-compiled step); mean, std: (3,).
    """
    return (images.astype("float32") - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-channel mean and standard deviation of uint8 RGB pixels, over `n` patches."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    n: int
    fingerprint: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> NormStats:
        """Inverse of to_json."""
        return cls(tuple(d["mean"]), tuple(d["std"]), int(d["n"]), str(d.get("fingerprint", "")))


IMAGENET_STATS = NormStats(IMAGENET_MEAN, IMAGENET_STD, 0, "imagenet")


def compute_norm_stats(source: PatchSource, block: int = 1024) -> NormStats:
    """Streams every patch of `source` once (in blocks) and returns its channel statistics."""
    total = np.zeros(3, np.float64)
    total_sq = np.zeros(3, np.float64)
    n = len(source)
    for start in range(0, n, block):
        x = source.read_images(start, min(start + block, n)).astype(np.float64)
        total += x.sum(axis=(0, 1, 2))
        total_sq += np.square(x).sum(axis=(0, 1, 2))
    count = max(n, 1) * 96 * 96
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return NormStats(
        tuple(float(v) for v in mean), tuple(float(v) for v in std), n, source.fingerprint()
    )


def _cache_candidates(source: PatchSource) -> list[Path]:
    name = f"norm_stats_{source.name}_{source.split}{getattr(source, 'cache_tag', '')}.json"
    root = Path(getattr(source, "root", ".")).resolve()
    user_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pcam_jax"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / ".pcam_jax_cache" / name, user_cache / "norm_stats" / f"{digest}_{name}"]


def dataset_norm_stats(source: PatchSource) -> NormStats:
    """Channel statistics of `source`, cached beside the data (or in ~/.cache/pcam_jax
    when the data directory is read-only) and recomputed when its files change."""
    fingerprint = source.fingerprint()
    candidates = _cache_candidates(source)
    for path in candidates:
        try:
            cached = NormStats.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if cached.fingerprint == fingerprint:
            return cached
    stats = compute_norm_stats(source)
    for path in candidates:
        try:
            write_json(path, stats.to_json())
            break
        except OSError:
            continue
    return stats


class GlobalBatchSampler:
    """Makes the global batches independent of the number of processes and workers.

    Global batch k is positions [k*B, (k+1)*B) of `inner` (B = b * process_count);
    process p's batch k is positions k*B + p*b + [0, b), in order, whichever of
    its grain workers builds it. grain's DataLoader reads sampler index
    g = l*P + p for local record l of process p; with W workers (W = 1 for none)
    worker r reads l = r + W*(q*b + t) for record t of its q-th batch, and the
    loader emits the workers' batches round-robin (local batch k = q*W + r).
    This inverts that layout. Each record keeps the rng of its position in
    `inner`, so augmentation does not depend on the layout either.
    """

    def __init__(
        self, inner: grain.samplers.IndexSampler, batch: int, processes: int, workers: int
    ) -> None:
        self._inner = inner
        self._batch, self._processes, self._workers = batch, processes, max(workers, 1)

    def __len__(self) -> int:
        """Whole global batches only (a finite `inner` ends on a batch boundary)."""
        global_batch = self._batch * self._processes
        return len(self._inner) // global_batch * global_batch

    def __repr__(self) -> str:
        return (
            f"GlobalBatchSampler({self._inner!r}, batch={self._batch}, "
            f"processes={self._processes}, workers={self._workers})"
        )

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        b, n_proc, n_work = self._batch, self._processes, self._workers
        local, process = divmod(index, n_proc)
        rest, worker = divmod(local, n_work)
        worker_batch, t = divmod(rest, b)
        k = worker_batch * n_work + worker
        meta = self._inner[k * b * n_proc + process * b + t]
        return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)


class _RangeSampler:
    """Records [start, stop) in order, once: one process's contiguous share of an eval split."""

    def __init__(self, start: int, stop: int) -> None:
        self._start, self._stop = start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __repr__(self) -> str:
        return f"_RangeSampler(start={self._start}, stop={self._stop})"

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if not 0 <= index < self._stop - self._start:
            raise IndexError(index)
        return grain.RecordMetadata(index=index, record_key=self._start + index)


class TeacherTarget(grain.transforms.Map):
    """Adds ``teacher``: the distillation target of the element's record index."""

    def __init__(self, targets: np.ndarray) -> None:
        self.targets = np.asarray(targets, np.float32)

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {**element, "teacher": self.targets[element["index"]]}


def make_loader(
    source: PatchSource,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    augment: AugmentConfig | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 2,
    read_buffer: int = 64,
    shard_options: grain.sharding.ShardOptions | None = None,
    num_epochs: int | None = None,
    targets: np.ndarray | None = None,
) -> grain.DataLoader:
    """A grain DataLoader over `source`, yielding batches of stored (or augmented) uint8 pixels.

    train=True: shuffled anew each epoch from `seed`, augmented, full batches
    only, endless unless `num_epochs`. train=False: in order, one pass, the last
    batch may be smaller, no augmentation. `shard_options` splits the records
    between JAX processes (see `process_shard_options`): for training each
    process gets its `batch_size` slice of every global batch (see
    `GlobalBatchSampler`); for evaluation a contiguous share of the split,
    none dropped. Each process (the main
    one, or each of `worker_count` workers) reads with `read_threads` threads
    `read_buffer` records ahead; grain's default (16 threads, 500 records)
    spends more time polling its buffer than reading on a 2-core host. With `targets` (float32,
    one per record) each element also carries ``teacher``: targets[its index]
    (``train.distill``).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size}: must be positive")
    if train and len(source) < batch_size:
        raise ValueError(
            f"{source.name}/{source.split} holds {len(source)} patches, fewer than one "
            f"training batch of {batch_size}; lower batch_size"
        )
    if not flags.FLAGS.is_parsed():
        # grain reads its absl flags (--grain_*); outside an absl app they keep their defaults.
        flags.FLAGS.mark_as_parsed()
    shard = shard_options or grain.sharding.NoSharding()
    sampler: Any
    loader_shard: grain.sharding.ShardOptions = shard
    if train:
        sampler = grain.samplers.IndexSampler(
            num_records=len(source), shuffle=True, num_epochs=num_epochs, seed=seed
        )
        if shard.shard_count > 1 or worker_count > 1:
            sampler = GlobalBatchSampler(sampler, batch_size, shard.shard_count, worker_count)
    elif shard.shard_count > 1:
        n, i, count = len(source), shard.shard_index, shard.shard_count
        start, stop = i * n // count, (i + 1) * n // count
        sampler, loader_shard = _RangeSampler(start, stop), grain.sharding.NoSharding()
    else:
        sampler = grain.samplers.IndexSampler(num_records=len(source), num_epochs=1)
    ops: list[Any] = [] if targets is None else [TeacherTarget(targets)]
    if train and augment is not None and (augment.d4 or augment.photometric):
        ops.append(RandomAugment(augment))
    ops.append(grain.transforms.Batch(batch_size, drop_remainder=train))
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=ops,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        shard_options=loader_shard,
        read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_buffer),
    )


def train_iterator_state(loader: grain.DataLoader, batches: int) -> bytes:
    """The state of `loader`'s iterator after it has yielded `batches` batches.

    For a training loader (see `GlobalBatchSampler`) this is the same point of
    the global stream for every layout of processes and workers, so a
    checkpoint written by N processes resumes on M. Follows grain's
    DataLoader state (version 2): per worker, the last sampler index it read.
    """
    shard = loader._shard_options  # grain exposes no getters; pinned grain, tested
    workers = loader.multiprocessing_options.num_workers
    batch = next(op for op in loader._operations if isinstance(op, grain.transforms.Batch))
    b, n_proc, p = batch.batch_size, shard.shard_count, shard.shard_index
    if workers == 0:
        last_seen = {"0": p + n_proc * (batches * b - 1)}
        last_worker = -1
    else:
        last_seen = {}
        for r in range(workers):
            taken = (batches - r + workers - 1) // workers * b  # records worker r has read
            last_seen[str(r)] = p + n_proc * (r + workers * (taken - 1))
        last_worker = batches % workers - 1
    state = {
        "version": 2,
        "last_seen_indices": last_seen,
        "last_worker_index": last_worker,
        "worker_count": workers,
        "sampler": repr(loader._sampler),
        "data_source": repr(loader._data_source),
    }
    return json.dumps(state, indent=4).encode()


def process_shard_options(drop_remainder: bool = True) -> grain.sharding.ShardOptions:
    """Shards records by JAX process (index jax.process_index() of jax.process_count())."""
    return grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)
