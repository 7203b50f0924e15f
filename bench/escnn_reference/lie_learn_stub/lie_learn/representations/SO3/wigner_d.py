"""Stand-in for ``lie_learn.representations.SO3.wigner_d``.

escnn imports ``wigner_D_matrix`` at import time for its SO(3) groups only; lie_learn's compiled
modules need numpy<2. The 2D groups of the benchmark (C4, D4) never call it, so where only
numpy 2 is available (the GPU machine) this stand-in lets escnn import; any SO(3) use fails
loudly here instead of computing something wrong.
"""


def wigner_D_matrix(*args: object, **kwargs: object) -> None:
    raise NotImplementedError(
        "lie_learn stand-in: SO(3) Wigner D matrices are unavailable; install the real lie_learn "
        "(numpy<2) to use escnn's 3D groups"
    )
