"""escnn/PyTorch side of ``bench/vs_escnn.py`` (runs with the reference interpreter).

    python bench/escnn_reference/escnn_bench.py --spec JSON --inputs inputs.npz [--threads 2]
        [--train-steps 3] [--eval-steps 3] [--warmup 1] [--basis default] [--device auto]

Builds the escnn network of ``--spec`` (``escnn_models.build``), then times, on the batch in
``--inputs`` (NHWC float32, transposed to NCHW here): a training step (``model.train()``,
forward, softmax cross-entropy, backward, SGD momentum 0.9 step; escnn expands every filter
from its basis coefficients in each training forward) and an evaluation forward
(``model.eval()`` under ``torch.no_grad()``: escnn expands the filters once and caches them,
which is what a user gets). Prints one line ``RESULT {json}`` at the end.

Never imports jax or pcam_jax. CPU: ``torch.set_num_threads(--threads)``; GPU (when
``torch.cuda.is_available()`` and ``--device`` is auto or gpu): CUDA timings with
synchronisation and ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--eval-steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--basis", default="default", choices=["default", "full"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    ap.add_argument(
        "--cold-cache",
        action="store_true",
        help="empty escnn's on-disk joblib cache (escnn/group/_cache) before construction",
    )
    args = ap.parse_args()
    spec = json.loads(args.spec)
    if args.cold_cache:
        import importlib.util
        import shutil

        spec_escnn = importlib.util.find_spec("escnn")
        for loc in spec_escnn.submodule_search_locations or []:
            shutil.rmtree(os.path.join(loc, "group", "_cache", "joblib"), ignore_errors=True)

    t_import = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import escnn_models  # imports escnn with scikit-learn hidden from it

    escnn = sys.modules["escnn"]

    import_s = time.perf_counter() - t_import
    use_gpu = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "gpu" and not use_gpu:
        raise SystemExit("escnn_bench: --device gpu but torch.cuda.is_available() is False")
    dev = torch.device("cuda" if use_gpu else "cpu")

    def sync() -> None:
        if use_gpu:
            torch.cuda.synchronize()

    data = np.load(args.inputs)
    x = torch.from_numpy(np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2))).to(dev)
    y = torch.from_numpy(data["y"].astype(np.int64)).to(dev)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = escnn_models.build(spec, args.basis).to(dev)
    sync()
    construct_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    signature = escnn_models.conv_signature(model, x[:1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def timed(fn: object) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    model.train()
    first_train_s = timed(train_step)
    for _ in range(args.warmup):
        timed(train_step)
    train_times = [timed(train_step) for _ in range(args.train_steps)]

    model.eval()
    with torch.no_grad():
        first_eval_s = timed(lambda: model(x))
        for _ in range(args.warmup):
            timed(lambda: model(x))
        eval_times = [timed(lambda: model(x)) for _ in range(args.eval_steps)]

    batch = x.shape[0]
    result = {
        "framework": "escnn",
        "versions": {
            "torch": torch.__version__,
            "escnn": getattr(escnn, "__version__", "?"),
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        },
        "device": torch.cuda.get_device_name(0) if use_gpu else "cpu",
        "platform": "gpu" if use_gpu else "cpu",
        "threads": torch.get_num_threads(),
        "basis": args.basis,
        "cold_cache": args.cold_cache,
        "batch": batch,
        "params": params,
        "conv_signature": signature,
        "import_s": import_s,
        "construct_s": construct_s,
        "first_train_step_s": first_train_s,
        "first_eval_step_s": first_eval_s,
        "train_step_s": statistics.median(train_times),
        "eval_step_s": statistics.median(eval_times),
        "train_images_per_s": batch / statistics.median(train_times),
        "eval_images_per_s": batch / statistics.median(eval_times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if use_gpu else None,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
