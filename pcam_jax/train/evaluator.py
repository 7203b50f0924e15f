"""The periodic validation of a training run, as a small object built from the config.

``Evaluator(config, source, predict_fn, mesh).run(state)`` predicts the validation split with
the EMA weights when the run keeps them (else the raw ones), through the predict path every
binary shares (``pcam_jax.infer.predict``), and returns AUC, accuracy, NLL and n (no bootstrap:
pcam-eval computes the interval). Imports: infer, train.step.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from pcam_jax.data.sources import PatchSource
from pcam_jax.infer.metrics import binary_metrics
from pcam_jax.infer.predict import make_eval_loader, predict
from pcam_jax.train.step import TrainState, eval_variables


class Evaluator:
    """Validation of `source` with a compiled `predict_fn` (see the module docstring)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        source: PatchSource,
        predict_fn: Any,
        mesh: jax.sharding.Mesh,
    ) -> None:
        self.config, self.source, self.predict_fn, self.mesh = config, source, predict_fn, mesh

    def run(self, state: TrainState) -> dict[str, Any]:
        """The validation metrics of `state` (its EMA weights when kept)."""
        loader = make_eval_loader(self.config, self.source)
        pred = predict(self.predict_fn, eval_variables(state), loader, self.mesh)
        return binary_metrics(pred["label"], pred["p_tumour"], n_bootstrap=0)
