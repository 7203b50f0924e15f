"""quickstart: a small p4m CNN on the synthetic PCam, about a minute on a 2-core CPU.

    pcam-data synth --out=data/synthetic
    pcam-train --config=configs/quickstart.py --workdir=runs/quickstart

(`python -m pcam_jax.quickstart` does all of it, then evaluates on the test split.)
"""

import ml_collections

from pcam_jax.config_base import quickstart_config


def get_config() -> ml_collections.ConfigDict:
    return quickstart_config()
