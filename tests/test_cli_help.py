"""`--help` of each binary lists its own flags with their descriptions, and nothing else."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_train import REPO

BINARIES = {
    "pcam_jax.cli.train": ["--config", "--workdir", "--coordinator_address", "--distributed"],
    "pcam_jax.cli.eval": ["--workdir", "--checkpoint", "--split", "--tta", "--weights"],
    "pcam_jax.cli.export": ["--workdir", "--checkpoint", "--out", "--weights"],
    "pcam_jax.cli.predict": ["--out", "--model", "--tta", "--batch_size"],
    "pcam_jax.cli.slide": ["--out", "--model", "--mpp", "--stride", "--tissue_threshold"],
    "pcam_jax.cli.explain": ["--out", "--model", "--method", "--predictions", "--group_views"],
    "pcam_jax.cli.camelyon_eval": ["--predictions", "--ground_truth", "--normal", "--out"],
}


@pytest.mark.parametrize("module", list(BINARIES))
def test_help_lists_the_binarys_own_flags(module):
    r = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.splitlines()[0].startswith("`pcam-")  # the usage line of its docstring
    for flag in BINARIES[module]:
        assert f"  {flag}" in out or f"  --[no]{flag[2:]}" in out, (flag, out)
    # library flags (jax, grain, orbax, absl) stay under --helpfull
    for foreign in ("--jax_", "--grain_", "--experimental_orbax", "--logtostderr"):
        assert foreign not in out
