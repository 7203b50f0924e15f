"""pcam-train for a GPU machine without TensorFlow (benchmark helper, not part of the package).

clu's metric writers import TensorFlow for their TensorBoard ``SummaryWriter``. A CUDA machine
set up for jax alone often has no TensorFlow, so, when ``import tensorflow`` fails, this
wrapper puts a stand-in ``SummaryWriter`` in its place before clu is imported: it appends each
scalar to ``WORKDIR/scalars.jsonl`` as ``{"step", "wall_time", "tag", "value"}`` (the logging
writer still prints them). Everything else is ``pcam-train`` unchanged:

    python bench/gpu_train.py --config=configs/cpu_subset.py --workdir=W [--config.a=b ...]

``bench/gpu_learning_curve.sh`` runs it on a lent GPU and ``bench/gpu_curve_summary.py`` reads
the JSON lines back. Set PCAM_BLOCK_TENSORFLOW=1 to try the
stand-in on a machine that has TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any


class JsonlScalarWriter:
    """clu MetricWriter duck type: scalars to LOGDIR/scalars.jsonl, everything else dropped."""

    def __init__(self, logdir: str, *args: Any, **kwargs: Any) -> None:
        Path(logdir).mkdir(parents=True, exist_ok=True)
        self._path = Path(logdir) / "scalars.jsonl"
        self._lock = threading.Lock()

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        now = time.time()
        lines = [
            json.dumps({"step": int(step), "wall_time": now, "tag": k, "value": float(v)})
            for k, v in scalars.items()
        ]
        with self._lock, open(self._path, "a") as f:
            f.write("".join(line + "\n" for line in lines))

    def _drop(self, *args: Any, **kwargs: Any) -> None:
        pass

    write_images = write_videos = write_audios = write_texts = write_histograms = _drop
    write_hparams = write_pointcloud = write_summaries = flush = close = _drop


def install_stand_in() -> bool:
    """Replaces clu's TensorBoard writer when TensorFlow cannot be imported; True if it did."""
    if os.environ.get("PCAM_BLOCK_TENSORFLOW") == "1":
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # as if not installed
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        module = types.ModuleType("clu.metric_writers.summary_writer")
        module.SummaryWriter = JsonlScalarWriter  # type: ignore[attr-defined]
        sys.modules["clu.metric_writers.summary_writer"] = module
        return True
    return False


if __name__ == "__main__":
    install_stand_in()
    from pcam_jax.cli.train import run

    run()
