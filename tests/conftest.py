"""Shared fixtures: a small synthetic PCam and the real 23,000-patch subset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from absl import flags

from pcam_jax.data import synth

SUBSET_ROOT = Path(
    os.environ.get(
        "PCAM_SUBSET_ROOT", Path(__file__).resolve().parents[1].parent / "shared/data/pcam-subset"
    )
)
SMALL_SIZES = {"train": 192, "valid": 64, "test": 64}


def pytest_configure(config: pytest.Config) -> None:
    # grain reads absl flags; outside an absl app they keep their defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PCam (192/64/64 patches), written once per session. Do not modify."""
    root = tmp_path_factory.mktemp("synthetic_pcam")
    synth.write_synthetic_pcam(root, sizes=SMALL_SIZES, seed=0)
    return root


@pytest.fixture
def synthetic_copy(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private, modifiable copy of the small synthetic PCam (without the statistics cache
    that training runs leave in `synthetic_root`)."""
    import shutil

    dst = tmp_path / "pcam"
    shutil.copytree(synthetic_root, dst, ignore=shutil.ignore_patterns(".pcam_jax_cache"))
    return dst


@pytest.fixture(scope="session")
def subset_root() -> Path:
    """The real PCam subset (JPEG folders); tests using it skip when it is absent."""
    if not (SUBSET_ROOT / "train").is_dir():
        pytest.skip(
            f"real PCam subset not found at {SUBSET_ROOT} (set PCAM_SUBSET_ROOT to its path); "
            "it lives outside the repository in ../shared/data/pcam-subset"
        )
    return SUBSET_ROOT
