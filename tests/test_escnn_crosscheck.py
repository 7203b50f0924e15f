"""pcam_jax's group convolutions against escnn (the independent reference), if it is installed.

The escnn side needs its own environment (``bash bench/reference_env.sh .venv-escnn``; torch CPU
+ escnn + numpy<2), found through ``$PCAM_ESCNN_PYTHON`` or ``.venv-escnn/bin/python``. Without
it the test is skipped with that reason. The checks themselves are in
``bench/crosscheck_escnn.py`` (documented in docs/escnn_reference.md): kernel spaces of the
lifting and group layers for p4 and p4m with negative controls, and a small network with the
same weights in both frameworks.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import crosscheck_escnn  # noqa: E402

REF = crosscheck_escnn.default_ref_python()


@pytest.mark.slow
@pytest.mark.skipif(
    REF is None,
    reason="no escnn reference env: run `bash bench/reference_env.sh .venv-escnn` "
    "or set PCAM_ESCNN_PYTHON",
)
def test_crosscheck_against_escnn(tmp_path):
    results, failures = crosscheck_escnn.run(REF, tmp_path)
    print(crosscheck_escnn.report(results))
    assert not failures, failures
    for group in ("p4", "p4m"):
        for name in ("lift", "group"):
            assert results[group][name]["residual"] < 1e-5
            assert results[group][name]["control_random"] > 0.1
        assert results[group]["network"]["logits_rel_diff"] < 1e-4
