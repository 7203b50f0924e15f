"""Convert a folder or Kaggle layout into the PCam HDF5 format, in constant memory."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np

from pcam_jax.data.pcam_format import PATCH_SHAPE, X_KEY, Y_KEY, split_paths
from pcam_jax.data.sources import PatchSource
from pcam_jax.runtime.files import atomic_path, write_json

BLOCK = 256  # patches read and written per step: memory stays at ~7 MB


def write_pcam_split(
    source: PatchSource, out_dir: str | Path, split: str, *, gzip: bool = False
) -> list[Path]:
    """Streams `source` into PCam x/y files for `split`; returns the written paths.

    Both files are written under temporary names and renamed only when every
    patch was read and written: a bad image stops the conversion with a
    DataError naming it and leaves no partial file. Sources with a split
    record (Kaggle) get it written beside the files as JSON.
    """
    out = Path(out_dir)
    x_path, y_path, _ = split_paths(out, split)
    n = len(source)
    compression = {"compression": "gzip", "compression_opts": 4} if gzip else {}
    with ExitStack() as stack:
        x_tmp = stack.enter_context(atomic_path(x_path))
        y_tmp = stack.enter_context(atomic_path(y_path))
        with h5py.File(x_tmp, "w") as fx:
            x = fx.create_dataset(
                X_KEY,
                shape=(n, *PATCH_SHAPE),
                dtype=np.uint8,
                chunks=(1, *PATCH_SHAPE) if n else None,
                **(compression if n else {}),
            )
            for start in range(0, n, BLOCK):
                stop = min(start + BLOCK, n)
                x[start:stop] = source.read_images(start, stop)
        with h5py.File(y_tmp, "w") as fy:
            fy.create_dataset(Y_KEY, data=source.labels.astype(np.uint8).reshape(-1, 1, 1, 1))
    written = [x_path, y_path]
    record = getattr(source, "split_record", None)
    if record is not None:
        record_path = out / f"pcam_jax_{split}_split_record.json"
        write_json(record_path, {**source.describe(), "root": str(source.root)})
        written.append(record_path)
    return written
