"""The errors pcam_jax reports to its users: one hierarchy, all here.

Every binary catches ``PcamError`` and prints its one-line message, which names the file, flag
or config field at fault and says what to do; anything else is a bug and keeps its traceback.
Modules raise these classes; none defines its own.

    PcamError
      DataError          a dataset, split or file of patches        (pcam_jax.data)
      InputError         a path or patch given to pcam-predict/-explain (pcam_jax.infer.patches)
      SlideError         a slide, its resolution or an output folder (pcam_jax.wsi)
      AnnotationError    a ground-truth annotation, mask or label list (pcam_jax.camelyon)
      ModelError         a checkpoint, workdir or model bundle       (pcam_jax.infer, workdir)
      TrainingError      a training config or run                   (pcam_jax.train, config)
      DistributedError   contradictory multi-process flags          (pcam_jax.runtime)
      Preempted          training stopped by a signal after saving  (pcam_jax.runtime.preemption)
"""

from __future__ import annotations


class PcamError(Exception):
    """A problem with the user's input, reported by message, without a traceback."""


class DataError(PcamError):
    """Bad or missing input data. The message names the file or field and what to do."""


class InputError(PcamError):
    """An input path or patch that pcam-predict or pcam-explain cannot use."""


class SlideError(PcamError):
    """A slide, its resolution or an output folder that pcam-slide cannot use."""


class AnnotationError(PcamError):
    """A ground-truth file (ASAP XML, GeoJSON, mask TIFF, reference list) that cannot be used;
    the message names the file and the element at fault."""


class ModelError(PcamError):
    """A model that cannot be loaded: no checkpoint, an unknown step, a bad bundle."""


class TrainingError(PcamError):
    """A training config or run that cannot go on."""


class DistributedError(PcamError):
    """The multi-process flags contradict each other."""


class Preempted(PcamError):
    """Training stopped on a signal after saving a checkpoint of `step`."""

    def __init__(self, step: int, signal_name: str) -> None:
        super().__init__(
            f"{signal_name}: saved a checkpoint at step {step} and stopped; run the same "
            "command again to resume"
        )
        self.step = step
        self.signal_name = signal_name


__all__ = [
    "AnnotationError",
    "DataError",
    "DistributedError",
    "InputError",
    "ModelError",
    "PcamError",
    "Preempted",
    "SlideError",
    "TrainingError",
]
