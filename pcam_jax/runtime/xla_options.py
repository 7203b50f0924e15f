"""XLA compiler options for pcam_jax's compiled steps.

On CPU, pcam_jax compiles its train, eval and predict steps with YNNPACK enabled for dot-like
operations (``xla_cpu_experimental_ynn_fusion_type``): XLA:CPU then runs convolutions and both
their gradients through YNNPACK, which is faster than XLA:CPU's default path (by how much is
measured in BENCHMARKS.md, "Where the time goes"); values agree with the default path to float
rounding.

Set ``PCAM_JAX_XLA_CPU_OPTIONS=0`` to compile with XLA's defaults instead. Other backends get
no options. Users who jit the layers of ``pcam_jax.equivariant.groups`` themselves pass
``compiler_options()`` to ``jax.jit`` to get the same speed.
"""

from __future__ import annotations

import os

import jax

#: What pcam_jax passes to XLA:CPU (the option's enum value, as ``jax.jit`` expects it).
CPU_COMPILER_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}
DISABLE_ENV = "PCAM_JAX_XLA_CPU_OPTIONS"


def compiler_options(backend: str | None = None) -> dict[str, str] | None:
    """Options for ``jax.jit(..., compiler_options=...)`` on ``backend`` (default: jax's).

    ``CPU_COMPILER_OPTIONS`` on CPU unless ``PCAM_JAX_XLA_CPU_OPTIONS=0``; None elsewhere.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or os.environ.get(DISABLE_ENV, "1").strip() == "0":
        return None
    return dict(CPU_COMPILER_OPTIONS)


__all__ = ["CPU_COMPILER_OPTIONS", "DISABLE_ENV", "compiler_options"]
