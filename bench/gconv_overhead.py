"""Benchmark (not a test): cost of group convolution vs one plain convolution.

For p4 and p4m, lifting (Z2 -> G) and group (G -> G) layers: time forward+backward (gradients
w.r.t. input and kernel) of ``groups.lifting_conv`` / ``groups.group_conv`` from the BASE kernel
(the expansion is inside the differentiated function, so its gather and the scatter-add of its
gradient are counted) against ``lax.conv_general_dilated`` on a kernel of the identical expanded
shape. Both under ``jax.jit`` with ``block_until_ready``, interleaved repetitions, median.

    python bench/gconv_overhead.py [--reps 15]

The last line is ``gconv_overhead_ratio=<worst median ratio>`` (target <= 1.10).
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from pcam_jax.equivariant import groups as G
from pcam_jax.runtime.xla_options import compiler_options

# (group, kind, batch, size, c_in, c_out): c_* are channels per group copy
CASES = [
    ("p4", "lift", 16, 96, 3, 16),
    ("p4", "group", 16, 48, 16, 16),
    ("p4", "group", 64, 12, 32, 32),
    ("p4m", "lift", 16, 96, 3, 11),
    ("p4m", "group", 16, 48, 11, 11),
    ("p4m", "group", 64, 12, 23, 23),
]


def make(group, kind, batch, size, cin, cout, k=3):
    n = G.group_order(group)
    rng = np.random.default_rng(0)
    if kind == "lift":
        x = rng.normal(size=(batch, size, size, cin))
        w = rng.normal(size=(k, k, cin, cout))
        expand = lambda w: G.lift_kernel(w, group)  # noqa: E731
    else:
        x = rng.normal(size=(batch, size, size, cin * n))
        w = rng.normal(size=(k, k, cin, n, cout))
        expand = lambda w: G.expand_group_kernel(w, group)  # noqa: E731
    x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
    w_plain = jnp.asarray(rng.normal(size=expand(w).shape), jnp.float32)

    def loss_group(x, w):
        return jnp.sum(jnp.square(G.conv(x, expand(w))))

    def loss_plain(x, w):
        return jnp.sum(jnp.square(G.conv(x, w)))

    opts = compiler_options()
    fg = jax.jit(jax.grad(loss_group, argnums=(0, 1)), compiler_options=opts)
    fp = jax.jit(jax.grad(loss_plain, argnums=(0, 1)), compiler_options=opts)
    return (lambda: fg(x, w)), (lambda: fp(x, w_plain)), expand(w).shape


def timeit(f):
    t = time.perf_counter()
    jax.block_until_ready(f())
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} cpus")
    worst = 0.0
    for case in CASES:
        fg, fp, shape = make(*case)
        for f in (fg, fp, fg, fp):  # compile + warm up
            timeit(f)
        tg, tp = [], []
        for i in range(args.reps):  # interleaved, alternating order
            pair = (fg, fp) if i % 2 == 0 else (fp, fg)
            for f in pair:
                (tg if f is fg else tp).append(timeit(f))
        mg, mp = float(np.median(tg)), float(np.median(tp))
        ratio = mg / mp
        worst = max(worst, ratio)
        group, kind, batch, size, cin, cout = case
        print(
            f"{group:4s} {kind:5s} N={batch:3d} {size:3d}x{size:<3d} kernel {str(tuple(shape)):18s}"
            f" group {mg * 1e3:8.2f} ms  plain {mp * 1e3:8.2f} ms  ratio {ratio:.3f}"
        )
    print(f"gconv_overhead_ratio={worst:.3f}")


if __name__ == "__main__":
    main()
