"""pcam_jax: rotation-equivariant CNNs for metastasis detection on PatchCamelyon."""

__version__ = "0.1.0"
