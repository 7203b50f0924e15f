"""Benchmark (not a test): pcam_jax against escnn/PyTorch on the same architectures and inputs.

    python bench/vs_escnn.py [--archs p4mcnn p4mdensenet-cpu] [--rounds 2] [--batch 64]
        [--ref-python .venv-escnn/bin/python] [--threads 2] [--device auto]

For each architecture, builds the pcam_jax model (``pcam_jax.models.create``) and the same
network in escnn (``bench/escnn_reference/escnn_models.py``), each in its OWN child process, on
the same batch (generated once, saved as npz, read by both children), alternating the two
frameworks (jax, escnn, then escnn, jax in the next round, ...). Each child reports:

* construction time: pcam_jax ``models.create`` + jitted ``model.init`` (as ``train.py`` does,
  compile included) until the first forward can run; escnn building the modules (basis
  computation and initialisation included);
* JIT compile time of the jax train and eval steps (reported separately) and the first escnn
  steps;
* training images/s: forward + softmax cross-entropy + backward + SGD (momentum 0.9) update in
  training mode (batch-norm batch statistics, dropout on); median over ``--train-steps`` steps
  after ``--warmup`` untimed ones;
* eval images/s: forward in inference mode (jax: jitted ``apply(train=False)``; escnn:
  ``model.eval()`` + ``torch.no_grad()``, which caches the expanded filters);
* peak resident memory of the child (``ru_maxrss``), and on a GPU the peak device memory
  (jax ``memory_stats()['peak_bytes_in_use']``, torch ``max_memory_allocated``);
* parameters (escnn's steerable-basis coefficients are fewer than pcam_jax's full base
  kernels with the default band-limited basis; ``--escnn-basis full`` spans the same space) and
  the list of convolutions (tensor channels in/out, kernel, output size), which must be equal.

The table gives medians over rounds and the ratios pcam_jax / escnn. On CPU both children are
pinned to the first ``--threads`` cores (XLA's and torch's thread pools then both use them;
torch.set_num_threads(--threads)). When the jax child sees a GPU (``platform == 'gpu'``) and
the torch child ``torch.cuda.is_available()``, the figures are GPU figures and the table says so.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (pcam_jax model name, pcam_jax overrides, escnn spec). The escnn spec repeats the
# widths pcam_jax derives (scaled_width(32, 64, 128) for p4m = 11, 23, 45); the children compare
# the resulting convolution lists, so a mismatch cannot go unnoticed.
ARCHS = {
    "p4mcnn": ("p4mcnn", {}, {"family": "cnn", "group": "p4m", "widths": [11, 23, 45]}),
    "p4cnn": ("p4cnn", {}, {"family": "cnn", "group": "p4", "widths": [16, 32, 64]}),
    "p4mdensenet-cpu": (
        "p4mdensenet",
        {"growth_rate": 4, "depth": 1},
        {"family": "densenet", "group": "p4m", "growth": 4, "depth": 1},
    ),
}


# ------------------------------------------------------------------------------ jax child


def _conv_signature_jax(closed_jaxpr) -> list[list[int]]:
    """[[Cin, Cout, k, H_out, W_out], ...] of every conv_general_dilated in the jaxpr."""
    out = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
                o = eqn.outvars[0].aval.shape
                out.append([int(lhs[3]), int(rhs[3]), int(rhs[0]), int(o[1]), int(o[2])])
            for p in eqn.params.values():
                for sub in p if isinstance(p, (tuple, list)) else [p]:
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None and hasattr(inner, "eqns"):
                        visit(inner)
                    elif hasattr(sub, "eqns"):
                        visit(sub)

    visit(closed_jaxpr.jaxpr)
    return out


def jax_child(args) -> None:
    t_import = time.perf_counter()
    import resource
    from functools import partial

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from pcam_jax import models
    from pcam_jax.runtime.xla_options import compiler_options

    import_s = time.perf_counter() - t_import
    name, overrides = args.jax_model, json.loads(args.jax_overrides)
    dev = jax.devices()[0]
    on_gpu = dev.platform == "gpu"
    if args.device == "gpu" and not on_gpu:
        raise SystemExit("vs_escnn jax child: --device gpu but jax has no GPU")
    data = np.load(args.inputs)
    x = jax.device_put(jnp.asarray(data["x"]), dev)
    y = jax.device_put(jnp.asarray(data["y"].astype(np.int32)), dev)

    t0 = time.perf_counter()
    model = models.create(name, **overrides)
    variables = models.init_variables(model, jax.random.key(0), x[:1])
    jax.block_until_ready(variables)
    construct_s = time.perf_counter() - t0
    construct_plain_s = None
    if args.plain_init:  # the same with jax.jit(model.init): optimised compile (slow on CPU)
        t0 = time.perf_counter()
        model2 = models.create(name, **overrides)
        jax.block_until_ready(jax.jit(partial(model2.init, train=False))(jax.random.key(0), x[:1]))
        construct_plain_s = time.perf_counter() - t0
    params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
    jaxpr = jax.make_jaxpr(partial(model.apply, train=False))(variables, x[:1])
    signature = _conv_signature_jax(jaxpr)

    tx = optax.sgd(0.01, momentum=0.9)
    state = (variables["params"], variables.get("batch_stats", {}), None)
    state = (state[0], state[1], tx.init(state[0]))

    def train_step(state, x, y, step):
        params, stats, opt_state = state

        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(jax.random.key(1), step)},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state), loss

    def eval_step(state, x):
        params, stats, _ = state
        return model.apply({"params": params, "batch_stats": stats}, x, train=False)

    t = time.perf_counter()
    opts = compiler_options()
    train_c = (
        jax.jit(train_step, donate_argnums=0, compiler_options=opts).lower(state, x, y, 0).compile()
    )
    train_compile_s = time.perf_counter() - t
    t = time.perf_counter()
    eval_c = jax.jit(eval_step, compiler_options=opts).lower(state, x).compile()
    eval_compile_s = time.perf_counter() - t

    step = 0

    def run_train():
        nonlocal state, step
        t = time.perf_counter()
        state, loss = train_c(state, x, y, step)
        jax.block_until_ready((state, loss))
        step += 1
        return time.perf_counter() - t

    def run_eval():
        t = time.perf_counter()
        jax.block_until_ready(eval_c(state, x))
        return time.perf_counter() - t

    first_train_s = run_train()
    for _ in range(args.warmup):
        run_train()
    train_times = [run_train() for _ in range(args.train_steps)]
    first_eval_s = run_eval()
    for _ in range(args.warmup):
        run_eval()
    eval_times = [run_eval() for _ in range(args.eval_steps)]

    batch = x.shape[0]
    peak_gpu = None
    if on_gpu:
        stats = dev.memory_stats() or {}
        peak_gpu = stats.get("peak_bytes_in_use", 0) / 2**20
    import flax

    result = {
        "framework": "pcam_jax",
        "versions": {
            "jax": jax.__version__,
            "flax": flax.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "device": getattr(dev, "device_kind", dev.platform),
        "platform": dev.platform,
        "threads": len(os.sched_getaffinity(0)),
        "batch": batch,
        "params": params,
        "conv_signature": signature,
        "import_s": import_s,
        "construct_s": construct_s,
        "construct_plain_jit_s": construct_plain_s,
        "train_compile_s": train_compile_s,
        "eval_compile_s": eval_compile_s,
        "first_train_step_s": first_train_s,
        "first_eval_step_s": first_eval_s,
        "train_step_s": statistics.median(train_times),
        "eval_step_s": statistics.median(eval_times),
        "train_images_per_s": batch / statistics.median(train_times),
        "eval_images_per_s": batch / statistics.median(eval_times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": peak_gpu,
        "compiler_options": opts,
    }
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ driver


def default_ref_python() -> str | None:
    env = os.environ.get("PCAM_ESCNN_PYTHON")
    if env:
        return env
    cand = ROOT / ".venv-escnn" / "bin" / "python"
    return str(cand) if cand.exists() else None


def fmt(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


def summarize(arch, runs_jax, runs_esc):
    def med(runs, key):
        vals = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    j, e = runs_jax[0], runs_esc[0]
    rows = []

    def row(label, key_j, key_e, better, unit_fmt=1):
        vj = med(runs_jax, key_j) if key_j else None
        ve = med(runs_esc, key_e) if key_e else None
        ratio = vj / ve if (vj is not None and ve) else None
        rows.append((label, fmt(vj, unit_fmt), fmt(ve, unit_fmt), fmt(ratio, 2), better))

    row("train images/s", "train_images_per_s", "train_images_per_s", "higher", 1)
    row("eval images/s", "eval_images_per_s", "eval_images_per_s", "higher", 1)
    row("construction s", "construct_s", "construct_s", "lower", 2)
    if j.get("construct_plain_jit_s") is not None:
        row(
            "  (jax: with jax.jit(model.init) instead)",
            "construct_plain_jit_s",
            "construct_s",
            "lower",
            2,
        )
    row(
        "train-step compile s (jax) / first step s (escnn)",
        "train_compile_s",
        "first_train_step_s",
        "-",
        2,
    )
    row(
        "eval-step compile s (jax) / first eval s (escnn)",
        "eval_compile_s",
        "first_eval_step_s",
        "-",
        2,
    )
    row("peak RSS MiB", "peak_rss_mib", "peak_rss_mib", "lower", 0)
    if j.get("peak_gpu_mib") is not None or e.get("peak_gpu_mib") is not None:
        row("peak GPU memory MiB", "peak_gpu_mib", "peak_gpu_mib", "lower", 0)
    rows.append(("trainable parameters", fmt(j["params"]), fmt(e["params"]), "-", "-"))
    same = j["conv_signature"] == e["conv_signature"]
    macs = sum(ci * co * k * k * h * w for ci, co, k, h, w in j["conv_signature"])
    rows.append(
        (
            "convolutions identical (count, GMACs/image)",
            f"{len(j['conv_signature'])}, {macs / 1e9:.2f}",
            f"{len(e['conv_signature'])}",
            "yes" if same else "NO",
            "-",
        )
    )
    return rows, same


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="*", default=["p4mcnn", "p4mdensenet-cpu"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--eval-steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument("--escnn-basis", default="default", choices=["default", "full"])
    ap.add_argument(
        "--escnn-cold-cache",
        action="store_true",
        help="empty escnn's on-disk basis cache before each escnn child (first-use timing)",
    )
    ap.add_argument(
        "--ref-python",
        default=default_ref_python(),
        help="interpreter with torch + escnn (default $PCAM_ESCNN_PYTHON or "
        ".venv-escnn/bin/python)",
    )
    ap.add_argument(
        "--ref-path",
        default=os.environ.get("PCAM_ESCNN_PATH", ""),
        help="extra PYTHONPATH for the escnn child only (e.g. a --target dir)",
    )
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(
        "--keep-going", action="store_true", help="report a failed child and go on (exit 1)"
    )
    ap.add_argument("--json-out", default=None, help="write all child results here")
    # child mode (internal)
    ap.add_argument("--child", choices=["jax"], help=argparse.SUPPRESS)
    ap.add_argument("--jax-model", help=argparse.SUPPRESS)
    ap.add_argument("--jax-overrides", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--plain-init", type=int, default=1, help="also time jax.jit(model.init)")
    args = ap.parse_args()

    if args.child == "jax":
        return jax_child(args)
    if not args.ref_python:
        raise SystemExit(
            "vs_escnn: no escnn interpreter; build one with `bash bench/reference_env.sh "
            ".venv-escnn` or pass --ref-python (see docs/escnn_reference.md)"
        )
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        raise SystemExit(f"vs_escnn: unknown archs {unknown}; known: {list(ARCHS)}")

    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="vs_escnn_"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.batch, 96, 96, 3), dtype=np.uint8)
    x = ((images.astype(np.float32) / 255.0 - 0.5) / 0.25).astype(np.float32)
    y = rng.integers(0, 2, size=args.batch).astype(np.int32)
    inputs = tmp / "inputs.npz"
    np.savez(inputs, x=x, y=y)

    n_cpu = os.cpu_count() or 1
    cores = list(range(min(args.threads, n_cpu)))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env_j = dict(env, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    env_e = dict(env, OMP_NUM_THREADS=str(args.threads))
    if args.ref_path:
        env_e["PYTHONPATH"] = args.ref_path
    common = [
        "--inputs",
        str(inputs),
        "--train-steps",
        str(args.train_steps),
        "--eval-steps",
        str(args.eval_steps),
        "--warmup",
        str(args.warmup),
    ]

    def pin():
        if args.device != "gpu" and len(cores) < n_cpu:
            os.sched_setaffinity(0, cores)

    results = {a: {"pcam_jax": [], "escnn": []} for a in args.archs}
    failed: list[str] = []
    load0 = os.getloadavg()
    t_start = time.time()
    for r in range(args.rounds):
        for arch in args.archs:
            model, overrides, spec = ARCHS[arch]
            jcmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                "jax",
                "--jax-model",
                model,
                "--jax-overrides",
                json.dumps(overrides),
                "--device",
                args.device,
                *common,
            ]
            ecmd = [
                args.ref_python,
                str(HERE / "escnn_reference" / "escnn_bench.py"),
                "--spec",
                json.dumps(spec),
                "--threads",
                str(args.threads),
                "--basis",
                args.escnn_basis,
                *(["--cold-cache"] if args.escnn_cold_cache else []),
                "--device",
                args.device,
                *common,
            ]
            order = [("pcam_jax", jcmd, env_j), ("escnn", ecmd, env_e)]
            if r % 2:
                order.reverse()
            for fw, cmd, e in order:
                try:
                    res = run_child_pinned(cmd, e, args.timeout, pin)
                except (SystemExit, subprocess.TimeoutExpired) as err:
                    if not args.keep_going:
                        raise
                    failed.append(f"{arch} {fw} round {r + 1}: {err}")
                    print(f"[round {r + 1}/{args.rounds}] {arch:16s} {fw:8s} FAILED: {err}")
                    continue
                results[arch][fw].append(res)
                print(
                    f"[round {r + 1}/{args.rounds}] {arch:16s} {fw:8s} "
                    f"train {res['train_images_per_s']:7.1f} img/s  "
                    f"eval {res['eval_images_per_s']:7.1f} img/s  "
                    f"construct {res['construct_s']:6.2f} s  "
                    f"peak RSS {res['peak_rss_mib']:6.0f} MiB  ({res['child_wall_s']:.0f} s)",
                    flush=True,
                )
    load1 = os.getloadavg()

    done = [a for a in args.archs if results[a]["pcam_jax"] and results[a]["escnn"]]
    if not done:
        raise SystemExit(
            "vs_escnn: no architecture completed in both frameworks:\n" + "\n".join(failed)
        )
    first = results[done[0]]
    j0, e0 = first["pcam_jax"][0], first["escnn"][0]
    on_gpu = j0["platform"] == "gpu" or e0["platform"] == "gpu"
    where = (
        f"GPU: jax on {j0['device']} ({j0['platform']}), torch on {e0['device']} ({e0['platform']})"
        if on_gpu
        else f"CPU: {len(cores)} cores ({n_cpu} present), torch threads {e0['threads']}"
    )
    print()
    print(f"## pcam_jax vs escnn -- {where}")
    print(
        f"batch {args.batch}, 96x96x3, {args.rounds} rounds alternating frameworks, "
        f"{args.train_steps} timed train / {args.eval_steps} eval steps after {args.warmup} "
        f"warm-up (medians), escnn basis '{args.escnn_basis}', escnn disk cache "
        f"{'emptied before each run' if args.escnn_cold_cache else 'as left by earlier runs'}"
    )
    print(f"pcam_jax: {json.dumps(j0['versions'])}")
    print(f"escnn:    {json.dumps(e0['versions'])}")
    print(
        f"load average before {load0[0]:.2f}, after {load1[0]:.2f}; "
        f"total {time.time() - t_start:.0f} s"
    )
    all_same = True
    for arch in done:
        rows, same = summarize(arch, results[arch]["pcam_jax"], results[arch]["escnn"])
        all_same &= same
        print()
        print(f"### {arch}")
        print()
        print("| metric | pcam_jax | escnn | pcam_jax / escnn | better |")
        print("|---|---:|---:|---:|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    if failed:
        print("\nFAILED children:\n  " + "\n  ".join(failed))
        raise SystemExit(1)
    if not all_same:
        raise SystemExit("vs_escnn: the two frameworks built different convolutions (see table)")


def run_child_pinned(cmd, env, timeout, pin):
    t = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=pin
    )
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"vs_escnn: child failed (exit {proc.returncode}): {' '.join(cmd)}")
    res = json.loads(lines[-1][len("RESULT ") :])
    res["child_wall_s"] = wall
    return res


if __name__ == "__main__":
    main()
