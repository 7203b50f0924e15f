"""Reading PyTorch ``state_dict`` checkpoints without torch: numpy arrays out, nothing executed.

A ``.pth`` file comes in one of two layouts, and both are read here with the standard library:

- **zip** (``torch.save`` since PyTorch 1.6): ``ARCHIVE/data.pkl`` is a pickle whose tensors
  refer, by persistent id ``("storage", StorageType, key, location, numel)``, to raw
  little-endian buffers ``ARCHIVE/data/KEY``.
- **legacy** (before 1.6; e.g. ``efficientnet-lite0-57934424.pth``): five pickles in a row
  (magic number, protocol version, system info, the object with persistent ids
  ``("storage", StorageType, key, location, numel, view)``, the list of storage keys), then each
  storage in that order as an int64 element count followed by its raw bytes.

Either way a tensor is rebuilt by ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)``: a strided view of the storage, copied out once every storage is read.

Safety: the unpickler is restricted. It resolves only the storage types, the tensor and
parameter rebuilders and ``collections.OrderedDict``; any other global (the way a malicious
pickle runs code) is refused with a ``ValueError`` naming the file and the global, so reading an
untrusted checkpoint never executes it. ``read_state_dict`` also reads an ``.npz`` of the same
keys. Output: ``{key: np.ndarray}`` in the file's order, dtypes as stored.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: The legacy format's first pickle (torch.serialization.MAGIC_NUMBER).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

#: PyTorch storage type name -> numpy dtype (little-endian, as torch writes on every platform).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    """Stands for ``torch.<Name>Storage`` in a pickle: carries the dtype only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _PendingTensor:
    """A tensor whose storage may not be read yet (legacy files store the data after the
    pickle): ``materialize`` copies it out once the storage is filled."""

    def __init__(self, storage: np.ndarray, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self, source: str) -> np.ndarray:
        storage, offset, size, stride = self.storage, self.offset, self.size, self.stride
        if any(n == 0 for n in size):
            return np.zeros(tuple(size), storage.dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if offset < 0 or last >= storage.size or any(s < 0 for s in stride):
            raise ValueError(
                f"{source}: a tensor of size {tuple(size)} at offset {offset} runs past its "
                f"storage of {storage.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            storage[offset:],
            shape=tuple(size),
            strides=tuple(s * storage.itemsize for s in stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(
    storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_unused: Any
) -> _PendingTensor:
    """``torch._utils._rebuild_tensor_v2`` over a 1-D numpy storage."""
    return _PendingTensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: _PendingTensor, *_unused: Any) -> _PendingTensor:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS``; persistent ids become numpy storages."""

    def __init__(self, file: BinaryIO, source: str, load_storage: Any) -> None:
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"{self._source}: refusing to unpickle global {module}.{name} (only tensors, "
                "storages and OrderedDict are read; is this a state_dict checkpoint?)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) >= 5):
            raise ValueError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"{self._source}: persistent id with storage type {storage_type!r}")
        return self._load_storage(str(key), storage_type.dtype, int(numel))


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"{path}: a zip checkpoint must hold one data.pkl, found {pkl}")
        prefix = pkl[0][: -len("data.pkl")]
        cache: dict[str, np.ndarray] = {}

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            if key not in cache:
                raw = zf.read(f"{prefix}data/{key}")
                if len(raw) < numel * dtype.itemsize:
                    raise ValueError(f"{path}: storage {key} holds {len(raw)} bytes, too few")
                cache[key] = np.frombuffer(raw, dtype=dtype, count=numel)
            return cache[key]

        with zf.open(pkl[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), str(path), load_storage).load()


def _read_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        header = _RestrictedUnpickler(f, str(path), None)
        if header.load() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a PyTorch checkpoint (no zip, no legacy magic number)")
        header.load()  # protocol version
        header.load()  # system info
        pending: dict[str, tuple[np.dtype, int]] = {}
        storages: dict[str, np.ndarray] = {}

        def defer_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            # filled in place below, after the pickle that refers to it
            pending[key] = (dtype, numel)
            return storages.setdefault(key, np.empty(numel, dtype))

        obj = _RestrictedUnpickler(f, str(path), defer_storage).load()
        keys = _RestrictedUnpickler(f, str(path), None).load()
        for key in keys:
            if key not in pending:
                raise ValueError(f"{path}: storage {key!r} listed but never used")
            dtype, _ = pending[key]
            (count,) = struct.unpack("<q", f.read(8))
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize or count != storages[key].size:
                raise ValueError(f"{path}: storage {key!r} is truncated or of the wrong size")
            storages[key][:] = np.frombuffer(raw, dtype=dtype)
    return obj


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """``{key: array}`` of a PyTorch checkpoint (zip or legacy ``.pth``) or an ``.npz``.

    Raises FileNotFoundError for a missing file and ValueError naming the file for anything that
    is not a state_dict of tensors (including any pickle that would run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, _PendingTensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}"
        )
    return {str(k): v.materialize(str(path)) for k, v in obj.items()}
