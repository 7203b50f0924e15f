"""Input-pipeline throughput: images/s from the PCam HDF5 and folder sources.

    python bench/loader.py [--subset=../shared/data/pcam-subset] [--workdir=/tmp/pcam_jax_bench]

Converts the real subset's train split (20,000 JPEG patches) to PCam HDF5 once
(cached in --workdir), then times the training loader (batch 64, shuffled,
endless) for each source x workers {0, 1, 2} x {no augmentation, D4}, and the
D4 + photometric setting. A benchmark, not a test: the target on a 2-core
machine is >= 3,000 images/s from HDF5 with D4 augmentation.

The last row, ``full``, is HDF5 with 2 workers and configs/cpu_subset.py's augmentation
through the path its ``augment.where`` picks on this machine
(``pcam_jax.data.device_augment.split_augment``; ``--augment_where`` overrides it): on the
host the workers augment; on the device the loader only reads, decodes, shuffles and batches
uint8, and the augmentation's cost moves into the train step (``bench/epoch.py`` times both).
The output ends with ``hdf5_full_augment_images_per_s=N``.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import jax
from absl import app, flags

from pcam_jax.config import load_config_file
from pcam_jax.data import convert, device_augment, pipeline, sources
from pcam_jax.data.pcam_format import split_paths
from pcam_jax.data.subset import subset_root

REPO = Path(__file__).resolve().parents[1]

_SUBSET = flags.DEFINE_string(
    "subset",
    str(subset_root()),
    "The real PCam subset in the folder layout.",
)
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/pcam_jax_bench", "Where the HDF5 copy is cached.")
_BATCHES = flags.DEFINE_integer("batches", 150, "Timed batches per setting.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to time.")
_AUGMENT_WHERE = flags.DEFINE_enum(
    "augment_where",
    None,
    list(pipeline.AUGMENT_WHERE),
    "augment.where for the `full` row (default: configs/cpu_subset.py's).",
)


def images_per_second(
    source: sources.PatchSource, augment: pipeline.AugmentConfig, workers: int
) -> float:
    loader = pipeline.make_loader(
        source,
        batch_size=_BATCH_SIZE.value,
        train=True,
        seed=0,
        augment=augment,
        worker_count=workers,
    )
    it = iter(loader)
    for _ in range(10):  # warm-up: worker start, first reads
        next(it)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(it)
    elapsed = time.perf_counter() - start
    del it
    return _BATCHES.value * _BATCH_SIZE.value / elapsed


def main(argv: Sequence[str]) -> None:
    del argv
    subset = Path(_SUBSET.value)
    hdf5_root = Path(_WORKDIR.value) / "pcam_subset_hdf5"
    folder_src = sources.make_source("folder", subset, "train")
    if not split_paths(hdf5_root, "train")[1].is_file():
        t0 = time.perf_counter()
        convert.write_pcam_split(folder_src, hdf5_root, "train")
        print(f"converted {len(folder_src)} patches to HDF5 in {time.perf_counter() - t0:.1f} s")
    srcs = {"pcam_hdf5": sources.make_source("pcam_hdf5", hdf5_root, "train"), "folder": folder_src}
    augments = {
        "none": pipeline.AugmentConfig(),
        "d4": pipeline.AugmentConfig(d4=True),
        "d4+photometric": pipeline.AugmentConfig(
            d4=True, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, hed_sigma=0.05
        ),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, {_cpu_count()} cores; "
        f"batch {_BATCH_SIZE.value}, {_BATCHES.value} timed batches per row"
    )
    print(f"{'source':<10} {'augment':<15} {'workers':>7} {'images/s':>9}")
    best_hdf5_d4 = 0.0
    for (name, src), (aug_name, aug), workers in itertools.product(
        srcs.items(), augments.items(), [int(w) for w in _WORKERS.value]
    ):
        if aug_name == "d4+photometric" and workers != max(int(w) for w in _WORKERS.value):
            continue
        rate = images_per_second(src, aug, workers)
        if name == "pcam_hdf5" and aug_name == "d4":
            best_hdf5_d4 = max(best_hdf5_d4, rate)
        print(f"{name:<10} {aug_name:<15} {workers:>7} {rate:>9,.0f}", flush=True)
    print(f"hdf5_d4_images_per_s={best_hdf5_d4:.0f}")
    host_part, where = full_augment()
    rate = images_per_second(srcs["pcam_hdf5"], host_part, 2)
    print(f"{'pcam_hdf5':<10} {'full':<15} {2:>7} {rate:>9,.0f}  (augmented on the {where})")
    print(f"hdf5_full_augment_images_per_s={rate:.0f}")


def full_augment() -> tuple[pipeline.AugmentConfig, str]:
    """The loader's part of cpu_subset's augmentation on this machine, and where it runs."""
    config = load_config_file(REPO / "configs" / "cpu_subset.py")
    fields = config.augment.to_dict()
    if _AUGMENT_WHERE.value:
        fields["where"] = _AUGMENT_WHERE.value
    platform = jax.default_backend()
    host_part, _ = device_augment.split_augment(fields, platform)
    where = device_augment.resolve_where(fields["where"], platform, fields["rotate_degrees"])
    return host_part, f"{where} ({platform})"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    app.run(main)
