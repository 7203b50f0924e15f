"""The group math: exact p4 and p4m convolutions built from rotated and reflected kernels.

Owns: the groups' law, element layout and kernel transforms as pure functions over arrays
(``groups``: read its opening first) and the thin flax.linen modules over them (``layers``:
lifting and group convolutions, group BatchNorm, pooling, dropout). It imports only jax, flax
and ``pcam_jax.errors``; the models (``pcam_jax.models``) are built from it.
"""
