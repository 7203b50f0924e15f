"""Where the real PCam subset lives: the 23,000 real patches (JPEG folders ``train`` and
``valid``, label folders ``0``/``1``, read by the ``folder`` source) that the tests needing real
tissue, the real-data acceptance runs and the benchmarks use.

The one definition of its path: ``$PCAM_SUBSET_ROOT`` when set, else
``../shared/data/pcam-subset`` beside the checkout (the development machines' layout; the
subset is never copied into the repository). Tests that need it skip with the reason when
it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

SUBSET_ENV = "PCAM_SUBSET_ROOT"
_CHECKOUT = Path(__file__).resolve().parents[2]  # pcam_jax/data/subset.py -> the checkout


def subset_root() -> Path:
    """The subset's folder (it may not exist: see ``subset_present``)."""
    return Path(os.environ.get(SUBSET_ENV) or _CHECKOUT.parent / "shared" / "data" / "pcam-subset")


def subset_present(root: Path | None = None) -> bool:
    """Whether `root` (default ``subset_root()``) holds the subset's train split."""
    return ((root or subset_root()) / "train").is_dir()
