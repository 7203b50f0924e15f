"""The errors pcam_jax reports to its users.

Every binary catches ``PcamError`` and prints its message, which names the file, flag or
config field at fault and says what to do; anything else is a bug and keeps its traceback.

    PcamError
      DataError       a dataset, split or file of patches  (pcam_jax.data.pcam_format)
      TrainingError   a training config or run              (pcam_jax.train)
      ModelError      a checkpoint, workdir or model bundle  (pcam_jax.inference)
"""

from __future__ import annotations


class PcamError(Exception):
    """A problem with the user's input, reported by message, without a traceback."""


class TrainingError(PcamError):
    """A training config or run that cannot go on."""


class ModelError(PcamError):
    """A model that cannot be loaded: no checkpoint, an unknown step, a bad bundle."""


__all__ = ["PcamError", "TrainingError", "ModelError"]
