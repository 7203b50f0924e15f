"""Explanations: what drove a model's tumour score, and views of its group structure.

Owns: the attribution methods and their sanity checks (``attribution``: gradient, SmoothGrad,
integrated gradients, Grad-CAM, all through the inference module), the figures (``figures``:
panels, galleries, lifting-filter poses, feature orbits) and pcam-explain's workflows as plain
functions (``workflows``). Imports: infer, equivariant, workdir, data, runtime, errors; never
``pcam_jax.train``.
"""
