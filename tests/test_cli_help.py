"""`--help` of each binary lists its own flags with their descriptions, and nothing else."""

from __future__ import annotations

import ast
import tomllib

import pytest

from tests.helpers import REPO, run_in_process

BINARIES = {
    "train": ["--config", "--workdir", "--coordinator_address", "--distributed"],
    "eval": ["--workdir", "--checkpoint", "--split", "--tta", "--weights"],
    "export": ["--workdir", "--checkpoint", "--out", "--weights"],
    "predict": ["--out", "--model", "--tta", "--batch_size"],
    "slide": ["--out", "--model", "--mpp", "--stride", "--tissue_threshold"],
    "explain": ["--out", "--model", "--method", "--predictions", "--group_views"],
    "camelyon_eval": ["--predictions", "--ground_truth", "--normal", "--out"],
    "quickstart": ["--workdir", "--seed"],
}


@pytest.mark.parametrize("module", list(BINARIES))
def test_help_lists_the_binarys_own_flags(module):
    r = run_in_process(module, "--help")  # the entry point as a console script runs it
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.splitlines()[0].startswith("`pcam-")  # the usage line of its docstring
    for flag in BINARIES[module]:
        assert f"  {flag}" in out or f"  --[no]{flag[2:]}" in out, (flag, out)
    # library flags (jax, grain, orbax, absl) stay under --helpfull
    for foreign in ("--jax_", "--grain_", "--experimental_orbax", "--logtostderr"):
        assert foreign not in out


def test_every_binary_is_a_console_script_named_as_its_docstring_says():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    modules = {p.stem for p in (REPO / "pcam_jax" / "cli").glob("*.py")} - {"__init__", "common"}
    assert {t.split(":")[0].removeprefix("pcam_jax.cli.") for t in scripts.values()} == modules
    for name, target in scripts.items():
        module, func = target.split(":")
        assert func == "run", target
        path = REPO / (module.replace(".", "/") + ".py")
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc.startswith(f"`{name}`"), (name, doc.splitlines()[0])
