"""Benchmark (not a test): the model table -- parameters, forward FLOPs per image, and
measured forward+backward time per batch on the default backend (CPU or GPU).

    python bench/models.py [--batch 64] [--reps 3] [--names cnn p4cnn ...] [--flops-only]
                           [--dtype float32|bfloat16]

For each model: parameter count; forward FLOPs for ONE image (96x96, and 299x299 for
inception_v3), from XLA's cost analysis of the compiled forward pass (a multiply-add counts as
2 FLOPs); and the median wall time of a jitted training-mode forward+backward (softmax
cross-entropy, gradients w.r.t. all parameters, batch-norm batch statistics, dropout on) on a
batch of ``--batch`` images, after one warm-up call, with the images/s that gives and the
device memory XLA plans for that step (arguments + outputs + temporaries, from the
compiled step's memory analysis). ``--dtype bfloat16`` computes in bfloat16 (parameters
and images cast, as the trainer's ``compute_dtype``). Prints a markdown table.
"""

import argparse
import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcam_jax import models
from pcam_jax.runtime.xla_options import compiler_options


def numpy_variables(model, x, seed=0):
    """Random variables without compiling jax RNG calls (shapes from eval_shape)."""
    shapes = jax.eval_shape(partial(model.init, train=False), jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            v = rng.normal(0.0, np.sqrt(2.0 / np.prod(s.shape[:-1])), s.shape)
        elif name in ("scale", "var"):
            v = np.ones(s.shape)
        else:
            v = np.zeros(s.shape)
        return jnp.asarray(v, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def flops_per_image(model, variables, size):
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    compiled = jax.jit(partial(model.apply, train=False)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def time_train_step(model, variables, size, batch, reps, dtype=jnp.float32):
    """(median seconds per fwd+bwd, XLA-planned bytes) of one training-mode gradient step."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, 3)), dtype)
    y = jnp.asarray(rng.integers(0, 2, batch))

    @partial(jax.jit, compiler_options=compiler_options())
    def grads(params, stats, x, y):
        def loss_fn(p):
            p = jax.tree.map(lambda a: a.astype(dtype), p)
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(0)},
            )
            logits = logits.astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd

        return jax.grad(loss_fn, has_aux=True)(params)

    args = (variables["params"], variables.get("batch_stats", {}), x, y)
    mem = grads.lower(*args).compile().memory_analysis()
    planned = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    jax.block_until_ready(grads(*args))  # compile + warm up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(grads(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), planned


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--names", nargs="*", default=models.names())
    ap.add_argument("--flops-only", action="store_true")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = ap.parse_args()
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()} ({device.device_kind}), "
        f"{os.cpu_count()} cpus, batch {args.batch}, reps {args.reps}, {args.dtype}",
        flush=True,
    )
    backend = jax.default_backend().upper()
    print(
        "| model | group | params | GFLOPs / 96x96 image (fwd) | "
        f"{backend} fwd+bwd ms / batch of {args.batch} | images/s | XLA memory MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    for name in args.names:
        model = models.create(name)
        size = models.input_size(name)
        variables = numpy_variables(model, jnp.zeros((1, size, size, 3)))
        n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
        if name == "inception_v3":
            small = models.create(name, aux_logits=False)
            v96 = numpy_variables(small, jnp.zeros((1, 96, 96, 3)))
            f96 = flops_per_image(small, v96, 96)
            f299 = flops_per_image(model, variables, 299)
            flops = f"{f96 / 1e9:.2f} (299x299: {f299 / 1e9:.2f})"
        elif jax.default_backend() != "cpu":
            flops = "-"  # XLA's GPU cost analysis does not count library (cuDNN) convolutions
        else:
            flops = f"{flops_per_image(model, variables, 96) / 1e9:.2f}"
        if args.flops_only:
            ms = rate = mib = "-"
        else:
            sec, planned = time_train_step(model, variables, size, args.batch, args.reps, dtype)
            ms, rate, mib = (
                f"{sec * 1e3:.1f}",
                f"{args.batch / sec:,.0f}",
                f"{planned / 2**20:,.0f}",
            )
            if size != 96:
                ms += f" (at {size}x{size})"
        row = [name, models.GROUP_OF[name], f"{n_params:,}", flops, ms, rate, mib]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
