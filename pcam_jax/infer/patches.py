"""Reading your own patches for pcam-predict: image files, folders and PCam HDF5 files.

``collect_inputs`` turns paths into ``PatchRef``s (a file, or a row of a ``_x.h5``; the label
from a ``0``/``normal`` or ``1``/``tumor``/``tumour`` parent folder, or from the sibling
``_y.h5``). ``read_batches`` decodes them under the patch policy (``fit_patch``): Pillow,
converted to RGB (greyscale and palette expanded, alpha dropped); larger than 96x96 -> the
centre 96x96; smaller, or unreadable -> InputError naming the file. ``predict_patches`` runs a
``LoadedModel`` over them in order; ``write_csv`` writes the result whole or not at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from pcam_jax.data import sources
from pcam_jax.errors import InputError
from pcam_jax.infer.predict import LoadedModel
from pcam_jax.runtime.files import write_csv as write_csv_atomic

# the folder source's image types and class folders, plus .bmp and the British "tumour"
IMAGE_SUFFIXES = (*sources.IMAGE_SUFFIXES, ".bmp")
LABEL_FOLDERS = {
    **{name: label for label, names in sources.CLASS_FOLDERS.items() for name in names},
    "tumour": 1,
}


@dataclass(frozen=True)
class PatchRef:
    """One patch: an image file, or row `index` of a PCam ``_x.h5`` file."""

    path: Path
    index: int | None = None
    label: int | None = None


def collect_inputs(inputs: Sequence[str | Path]) -> list[PatchRef]:
    """The patches named by `inputs` (files, folders searched recursively, ``_x.h5`` files),
    in the given order, folders sorted by path."""
    refs: list[PatchRef] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            refs += [PatchRef(f, None, LABEL_FOLDERS.get(f.parent.name.lower())) for f in files]
        elif path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
            refs += _hdf5_refs(path)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            refs.append(PatchRef(path, None, LABEL_FOLDERS.get(path.parent.name.lower())))
        elif path.is_file():
            raise InputError(
                f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a PCam _x.h5 file"
            )
        else:
            raise InputError(f"{path}: no such file or folder")
    if not refs:
        raise InputError("no input patches; give image files, folders or PCam _x.h5 files")
    return refs


def input_files(refs: Sequence[PatchRef]) -> list[Path]:
    """Every file the patches are read from: images, ``_x.h5`` files and their ``_y.h5``."""
    files = dict.fromkeys(r.path for r in refs)
    for path in list(files):
        if path.name.endswith("_x.h5"):
            files[path.with_name(path.name.replace("_x.h5", "_y.h5"))] = None
    return list(files)


def _hdf5_refs(path: Path) -> list[PatchRef]:
    try:
        with h5py.File(path, "r") as f:
            if "x" not in f:
                raise InputError(f"{path}: no dataset 'x'; expected a PCam *_x.h5 file")
            x = f["x"]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise InputError(
                    f"{path}: dataset 'x' has shape {x.shape} dtype {x.dtype}; expected uint8 "
                    "RGB patches (N, 96, 96, 3) as in PCam"
                )
            n = int(x.shape[0])
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({e})") from None
    labels: list[int | None] = [None] * n
    y_path = path.with_name(path.name.replace("_x.h5", "_y.h5"))
    if y_path != path and y_path.is_file():
        y = _hdf5_labels(y_path)
        if len(y) != n:
            raise InputError(f"{y_path}: {len(y)} labels for the {n} patches of {path}")
        labels = [int(v) for v in y]
    return [PatchRef(path, i, labels[i]) for i in range(n)]


def _hdf5_labels(y_path: Path) -> np.ndarray:
    """The labels of a PCam *_y.h5 file, checked to be 0 or 1."""
    try:
        with h5py.File(y_path, "r") as f:
            if "y" not in f:
                raise InputError(f"{y_path}: no dataset 'y'; expected a PCam *_y.h5 file")
            y = np.asarray(f["y"]).reshape(-1)
    except OSError as e:
        raise InputError(f"{y_path}: not a readable HDF5 file ({e})") from None
    bad = np.flatnonzero((y != 0) & (y != 1))
    if bad.size:
        raise InputError(
            f"{y_path}: {bad.size} labels outside {{0, 1}} (first at index {bad[0]}: "
            f"{y[bad[0]]}); PCam labels are 0 (normal) or 1 (tumour). Fix the file, or move it "
            "away to predict without labels"
        )
    return y


def fit_patch(image: np.ndarray, where: str, size: int = 96) -> np.ndarray:
    """The policy for a decoded RGB image (H, W, 3): centre crop to size x size when larger,
    InputError when smaller."""
    h, w = image.shape[:2]
    if h < size or w < size:
        raise InputError(
            f"{where}: {w}x{h} pixels, smaller than the model's {size}x{size} patches; "
            "give patches of at least that size at 0.972 um/px"
        )
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def read_image_patch(path: Path, size: int = 96) -> np.ndarray:
    """uint8 (size, size, 3) of an image file under the documented policy."""
    return fit_patch(sources.decode_rgb(path, InputError), str(path), size)


def read_batches(refs: list[PatchRef], batch: int, size: int = 96) -> Iterator[np.ndarray]:
    """uint8 (<=batch, size, size, 3) arrays of the patches of `refs`, in order (image files
    decoded on threads while the model runs; HDF5 rows read in blocks)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        for lo in range(0, len(refs), batch):
            chunk = refs[lo : lo + batch]
            if all(r.index is not None and r.path == chunk[0].path for r in chunk):
                with h5py.File(chunk[0].path, "r") as f:
                    x = np.asarray(f["x"][chunk[0].index : chunk[-1].index + 1])
                yield np.stack(
                    [
                        fit_patch(im, f"{chunk[0].path}[{r.index}]", size)
                        for im, r in zip(x, chunk, strict=True)
                    ]
                )
            else:
                yield np.stack(list(pool.map(lambda r: _read_ref(r, size), chunk)))


def _read_ref(ref: PatchRef, size: int) -> np.ndarray:
    if ref.index is None:
        return read_image_patch(ref.path, size)
    with h5py.File(ref.path, "r") as f:
        return fit_patch(np.asarray(f["x"][ref.index]), f"{ref.path}[{ref.index}]", size)


def predict_patches(
    model: LoadedModel,
    refs: list[PatchRef],
    *,
    batch_size: int = 256,
    tta: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """p(tumour) float32 (N,) of `refs`, in order."""
    from tqdm import tqdm

    out: list[np.ndarray] = []
    with tqdm(total=len(refs), unit="patch", disable=not progress, file=sys.stderr) as bar:
        batches = read_batches(refs, batch_size, model.patch_size)
        for p in model.predict_batches(batches, batch_size=batch_size, tta=tta):
            out.append(p)
            bar.update(len(p))
    return np.concatenate(out)


def write_csv(path: Path, refs: list[PatchRef], p: np.ndarray) -> None:
    """FILE.csv of the module docstring, written whole or not at all."""
    with_index = any(r.index is not None for r in refs)
    header = ["path", *(["index"] if with_index else []), "label", "p_tumour"]
    rows = (
        [
            str(r.path),
            *([] if not with_index else ["" if r.index is None else r.index]),
            "" if r.label is None else r.label,
            repr(float(q)),
        ]
        for r, q in zip(refs, p, strict=True)
    )
    write_csv_atomic(path, header, rows)
