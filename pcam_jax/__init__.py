"""pcam_jax: rotation-equivariant CNNs for metastasis detection on PatchCamelyon.

The package is a stack of layers (errors, runtime, equivariant, models, data, config, workdir,
infer; then explain, train and camelyon side by side; quickstart; cli), each importing only
those below it: docs/architecture.md is their one description, and tests/test_architecture.py
checks the code and that table against each other.
"""

__version__ = "0.1.0"
