"""End-to-end training speed of any config: the loader, the augmentation and the step, timed
together over a fraction of an epoch and extrapolated to PCam's 262,144 training patches.

    python bench/epoch.py --config=configs/cpu_subset.py[:ARG] [--config.a.b=V ...] \\
        [--data=DIR] [--steps=200] [--workdir=/tmp/pcam_jax_epoch]

Data: --data is a PCam HDF5 folder (train and valid splits). Without it, a synthetic PCam of
PCam's size (--synth_train=262144, --synth_valid=32768 patches) is written once into --workdir
and reused: --synth_unique patches are rendered by ``pcam_jax.data.synth`` in parallel
(--synth_workers processes), the rest are D4 copies of them, which costs the loader the same
(uncompressed, one chunk per patch). The output says which data it used.

The run is the trainer's own set-up (``pcam_jax.train.setup``, ``compile_train_step``, the
``Evaluator``) without checkpoints or logs: ``--warmup`` untimed steps (compilation, workers
starting) and one untimed validation (its compilation), then ``--steps`` timed steps. Reported:

- images/s end to end: ``next(loader)``, the global batch, the step (with the augmentation
  when ``augment.where`` resolves to ``device``), blocking on the state at the end;
- the periodic validation, timed on its own: every ``eval_every_steps`` (the config's, or
  --eval_every) within the timed steps, else one pass after them;
- seconds per epoch: training at the measured rate plus the validations an epoch holds, and
  the fraction of an epoch actually run;
- device memory (``memory_stats()`` of device 0: in use and peak), or n/a (CPU);
- host CPU: CPU seconds per wall second of the timed steps (cores busy), this process and its
  grain workers (os.times; live workers through psutil when installed).

It ends with ``key=value`` lines (images_per_s, epoch_seconds, ...).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import h5py
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pcam_jax.config import PCAM_TRAIN_PATCHES, load_config_file
from pcam_jax.data import device_augment, pipeline, sources, synth
from pcam_jax.data.pcam_format import PATCH_SHAPE, X_KEY, Y_KEY, split_paths
from pcam_jax.infer.model import create_model, make_preprocess
from pcam_jax.infer.predict import make_predict_fn
from pcam_jax.runtime.distributed import make_mesh
from pcam_jax.runtime.files import atomic_path
from pcam_jax.train import setup
from pcam_jax.train.evaluator import Evaluator
from pcam_jax.train.optim import make_schedule
from pcam_jax.train.step import compile_train_step

PCAM_VALID_PATCHES = 32_768
_BLOCK = 2048  # patches written to HDF5 at a time


# --- a PCam-size synthetic HDF5 --------------------------------------------------------------


def _render(args: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    split, n, seed = args
    images, labels, _ = synth.make_split(split, n, seed)
    return images, labels


def _unique_patches(split: str, n: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` rendered patches and labels, in chunks over `workers` processes."""
    chunk = max(1, min(256, -(-n // max(workers, 1))))
    jobs = [(split, min(chunk, n - s), 1000 + s // chunk) for s in range(0, n, chunk)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_render, jobs)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def write_split(root: Path, split: str, n: int, unique: int, workers: int) -> None:
    """Split `split` of `n` patches: `unique` rendered ones, the rest their D4 copies."""
    pool_x, pool_y = _unique_patches(split, min(n, unique), workers)
    rng = np.random.default_rng(0)
    labels = np.empty(n, np.uint8)
    x_path, y_path, _ = split_paths(root, split)
    with atomic_path(x_path) as tmp, h5py.File(tmp, "w") as f:
        x = f.create_dataset(X_KEY, (n, *PATCH_SHAPE), np.uint8, chunks=synth.X_CHUNKS)
        for start in range(0, n, _BLOCK):
            stop = min(start + _BLOCK, n)
            picks = np.arange(start, stop) % len(pool_x)
            block = pool_x[picks].copy()
            for i in np.flatnonzero(np.arange(start, stop) >= len(pool_x)):
                g = int(rng.integers(1, 8))
                block[i] = pipeline.d4_transform(block[i], g // 2, bool(g % 2))
            x[start:stop] = block
            labels[start:stop] = pool_y[picks]
    with atomic_path(y_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset(Y_KEY, data=labels.reshape(-1, 1, 1, 1))


def synthetic_root(args: argparse.Namespace) -> tuple[Path, str]:
    """The synthetic PCam for these sizes (written now unless already there), and a line."""
    root = Path(args.workdir) / f"synthetic_pcam_{args.synth_train}_{args.synth_valid}"
    sizes = {"train": args.synth_train, "valid": args.synth_valid}
    if all(split_paths(root, s)[1].is_file() for s in sizes):
        return root, f"synthetic PCam-format HDF5 at {root} (reused)"
    t0 = time.perf_counter()
    for split, n in sizes.items():
        write_split(root, split, n, args.synth_unique, args.synth_workers)
    seconds = time.perf_counter() - t0
    return root, (
        f"synthetic PCam-format HDF5 at {root}, written in {seconds:.0f} s "
        f"({args.synth_unique:,} unique patches per split rendered on {args.synth_workers} "
        "processes, the rest D4 copies)"
    )


# --- host CPU and device memory --------------------------------------------------------------


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) so far of this process and of its child processes (the
    grain workers: the live ones through psutil, when installed, plus the finished ones)."""
    t = os.times()
    workers = t.children_user + t.children_system
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                c = child.cpu_times()
                workers += c.user + c.system
            except psutil.Error:
                continue
    except ImportError:
        pass
    return t.user + t.system, workers


def device_memory() -> tuple[float, float] | None:
    """Device 0's memory (GiB in use, GiB peak), or None where the backend does not report it."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "bytes_in_use" not in stats:
        return None
    gib = 2.0**30
    peak = stats.get("peak_bytes_in_use", stats["bytes_in_use"])
    return stats["bytes_in_use"] / gib, peak / gib


# --- the timed run ---------------------------------------------------------------------------


def build(config: Any) -> dict[str, Any]:
    """The trainer's pieces for `config`: loader iterator, state, compiled step, evaluator."""
    mesh = make_mesh()
    train_src = sources.from_config(config, config.data.train_split)
    eval_src = sources.from_config(config, config.data.eval_split)
    norm = setup.norm_stats(config, train_src)
    model = create_model(config)
    preprocess = make_preprocess(config, norm)
    lr = config.optimizer.learning_rate
    schedule = make_schedule(config.schedule, config.num_train_steps, lr)
    state = setup.replicate(setup.create_state(config, model, schedule), mesh)
    key = jax.device_put(jax.random.key(config.seed), NamedSharding(mesh, P()))
    predict_fn = make_predict_fn(model, preprocess, mesh)
    return {
        "mesh": mesh,
        "iter": iter(setup.make_train_loader(config, train_src)),
        "state": state,
        "key": key,
        "step_fn": compile_train_step(config, preprocess, schedule, mesh),
        "evaluator": Evaluator(config, eval_src, predict_fn, mesh),
        "n_train": len(train_src),
        "n_eval": len(eval_src),
    }


def run_steps(parts: dict[str, Any], steps: int) -> None:
    """`steps` steps of the loader and the compiled step, in place on `parts["state"]`."""
    for _ in range(steps):
        batch = setup.global_batch(parts["mesh"], next(parts["iter"]))
        parts["state"], _ = parts["step_fn"](parts["state"], batch, parts["key"])


def measure(parts: dict[str, Any], steps: int, warmup: int, eval_every: int) -> dict[str, Any]:
    """Warm-up, then `steps` timed steps with a validation every `eval_every` timed apart."""
    run_steps(parts, warmup)
    parts["evaluator"].run(parts["state"])  # compiles the predict step
    jax.block_until_ready(parts["state"])
    val_seconds: list[float] = []
    train_seconds, done = 0.0, 0
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    while done < steps:
        chunk = min(eval_every - done % eval_every, steps - done)
        t0 = time.perf_counter()
        run_steps(parts, chunk)
        jax.block_until_ready(parts["state"])
        train_seconds += time.perf_counter() - t0
        done += chunk
        if done % eval_every == 0:
            t0 = time.perf_counter()
            parts["evaluator"].run(parts["state"])
            val_seconds.append(time.perf_counter() - t0)
    cpu1, wall = cpu_seconds(), time.perf_counter() - wall0
    if not val_seconds:  # fewer steps than eval_every: one pass after them
        t0 = time.perf_counter()
        parts["evaluator"].run(parts["state"])
        val_seconds.append(time.perf_counter() - t0)
    return {
        "train_seconds": train_seconds,
        "val_seconds": float(np.mean(val_seconds)),
        "val_passes": len(val_seconds),
        "main_cores": (cpu1[0] - cpu0[0]) / wall,
        "worker_cores": (cpu1[1] - cpu0[1]) / wall,
    }


def report(config: Any, args: argparse.Namespace, parts: dict[str, Any], m: dict[str, Any]) -> None:
    """Prints the measurements and the epoch they extrapolate to."""
    batch, steps = config.batch_size, args.steps
    rate = steps * batch / m["train_seconds"]
    steps_per_epoch = PCAM_TRAIN_PATCHES / batch
    eval_every = args.eval_every or config.eval_every_steps
    val_per_epoch = int(steps_per_epoch // eval_every)
    train_epoch = steps_per_epoch * m["train_seconds"] / steps
    epoch = train_epoch + val_per_epoch * m["val_seconds"]
    print(
        f"steps: {steps} timed (+{args.warmup} warm-up) x batch {batch} = {steps * batch:,} "
        f"patches, {steps * batch / PCAM_TRAIN_PATCHES:.2%} of an epoch of "
        f"{PCAM_TRAIN_PATCHES:,}"
    )
    print(f"train: {rate:,.0f} images/s end to end (loader + augmentation + step)")
    print(
        f"validation: {m['val_seconds']:.2f} s per pass of {parts['n_eval']:,} patches "
        f"({m['val_passes']} timed), every {eval_every} steps: {val_per_epoch} per epoch"
    )
    print(
        f"epoch: {train_epoch:,.0f} s training + {val_per_epoch} x {m['val_seconds']:.2f} s "
        f"validation = {epoch:,.0f} s per epoch of {PCAM_TRAIN_PATCHES:,} patches "
        "(extrapolated)"
    )
    memory = device_memory()
    if memory is None:
        print("device memory: n/a (the backend does not report it)")
    else:
        print(f"device memory: {memory[0]:.2f} GiB in use, {memory[1]:.2f} GiB peak")
    print(
        f"host CPU: {m['main_cores'] + m['worker_cores']:.2f} cores busy during the timed steps "
        f"(this process {m['main_cores']:.2f}, loader workers {m['worker_cores']:.2f}; "
        f"{len(os.sched_getaffinity(0))} cores)"
    )
    print(f"images_per_s={rate:.0f}")
    print(f"val_seconds={m['val_seconds']:.3f}")
    print(f"epoch_seconds={epoch:.0f}")
    print(f"epoch_fraction_run={steps * batch / PCAM_TRAIN_PATCHES:.4f}")
    print(f"device_peak_gib={memory[1]:.2f}" if memory else "device_peak_gib=n/a")


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
    ap.add_argument("--data", default="", help="a PCam HDF5 folder (default: synthetic)")
    ap.add_argument("--steps", type=int, default=200, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--eval_every", type=int, default=0, help="default: eval_every_steps")
    ap.add_argument("--workdir", default="/tmp/pcam_jax_epoch", help="for the synthetic data")
    ap.add_argument("--synth_train", type=int, default=PCAM_TRAIN_PATCHES)
    ap.add_argument("--synth_valid", type=int, default=PCAM_VALID_PATCHES)
    ap.add_argument("--synth_unique", type=int, default=8192, help="rendered patches per split")
    ap.add_argument("--synth_workers", type=int, default=len(os.sched_getaffinity(0)))
    args, rest = ap.parse_known_args()
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
        ap.error(f"unrecognised arguments: {' '.join(bad)}")
    return args, rest


def main() -> None:
    args, overrides = parse_args()
    config = load_config_file(args.config, *overrides)
    if args.data:
        root, said = Path(args.data), f"PCam HDF5 at {args.data} (--data)"
    else:
        root, said = synthetic_root(args)
    config.data.source, config.data.root = "pcam_hdf5", str(root)
    config.data.train_split, config.data.eval_split = "train", "valid"
    setup.check_recipe(config)
    config = setup.resolve_augment_where(config)
    parts = build(config)
    fields = config.augment.to_dict()
    where = device_augment.resolve_where(fields["where"], jax.default_backend())
    print(f"data: {said}; {parts['n_train']:,} train / {parts['n_eval']:,} valid patches")
    print(
        f"config: {args.config} ({config.model.name}), batch {config.batch_size}, "
        f"{jax.device_count()} {jax.default_backend()} device(s), augmentation on the {where} "
        f"(augment.where), {config.data.worker_count} loader workers"
    )
    eval_every = args.eval_every or config.eval_every_steps
    m = measure(parts, args.steps, args.warmup, eval_every)
    report(config, args, parts, m)


if __name__ == "__main__":
    main()
