"""What a slide folder was computed from, so that a cohort never credits one slide with another
slide's results.

A slide folder's summary.json records ``input``, the slide file's identity when pcam-slide read
it, and ``mpp_given``, the level-0 resolution pcam-slide was given for it (``--mpp`` or a list's
``mpp`` column; null when the slide's own was used). The identity (``slide_identity``):

    path         the file's resolved path (links followed)
    size         its size in bytes
    mtime_ns     its modification time, in nanoseconds
    fingerprint  BLAKE2b (128 bits) of its size and SAMPLES evenly spaced CHUNK-byte pieces, the
                 first and the last included: 1 MiB read, whatever the file's size

The rule (``changes``): a slide is still the one its folder was computed from when its path,
size and mtime are the recorded ones (nothing is read), or else when its size and fingerprint
are (the same bytes moved, copied or touched); and its given resolution must be the recorded
one. Anything else is a change, described in words for a one-line refusal. The fingerprint
samples the file: an edit that keeps the size and falls between the pieces goes unseen when the
modification time changed too. Imports: nothing of the package.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

SAMPLES = 16
CHUNK = 64 * 1024


def fingerprint(path: str | Path, size: int) -> str:
    """BLAKE2b-128 hex digest of `size` and SAMPLES pieces of CHUNK bytes evenly spaced over the
    file at `path` (the whole file when it is smaller than SAMPLES pieces)."""
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as f:
        if size <= SAMPLES * CHUNK:
            digest.update(f.read())
        else:
            last = size - CHUNK
            for k in range(SAMPLES):
                f.seek(k * last // (SAMPLES - 1))
                digest.update(f.read(CHUNK))
    return digest.hexdigest()


def slide_identity(path: str | Path) -> dict[str, Any]:
    """The identity of the slide file at `path` (see the module docstring); OSError when it
    cannot be read."""
    resolved = os.path.realpath(path)
    st = os.stat(resolved)
    return {
        "path": resolved,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "fingerprint": fingerprint(resolved, st.st_size),
    }


def changes(summary: dict[str, Any], path: str | Path, mpp_given: float | None) -> list[str]:
    """How the slide at `path`, given resolution `mpp_given` (None: its own), differs from what
    the slide folder whose summary.json is `summary` was computed from; empty when it does not."""
    recorded = summary.get("input")
    if not isinstance(recorded, dict):
        return ["its folder does not record the slide it was computed from"]
    found: list[str] = []
    old_mpp = summary.get("mpp_given")
    if old_mpp != mpp_given:
        own = "the slide's own"
        found.append(
            f"mpp {own if mpp_given is None else mpp_given}, computed with "
            f"{own if old_mpp is None else old_mpp}"
        )
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except OSError as e:
        return [*found, f"the slide cannot be read ({e.strerror})"]
    same_file = (resolved, st.st_size, st.st_mtime_ns) == (
        recorded.get("path"),
        recorded.get("size"),
        recorded.get("mtime_ns"),
    )
    if same_file:
        return found
    if st.st_size != recorded.get("size"):
        return [*found, f"{st.st_size} bytes, computed from {recorded.get('size')}"]
    try:
        same_bytes = fingerprint(resolved, st.st_size) == recorded.get("fingerprint")
    except OSError as e:
        return [*found, f"the slide cannot be read ({e.strerror})"]
    if not same_bytes:
        was = recorded.get("path")
        found.append(
            "other content than the file it was computed from"
            + (f" ({was})" if was != resolved else " (the file was replaced or modified)")
        )
    return found
