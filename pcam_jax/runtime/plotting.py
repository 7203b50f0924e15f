"""The one matplotlib set-up: a headless (Agg) pyplot, imported only when a figure is drawn.

``pyplot()`` selects the Agg backend before pyplot is first imported, so figures render on
machines without a display and importing pcam_jax does not import matplotlib.
``save_figure(fig, path)`` writes a PNG atomically (``files.atomic_path``) and closes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pcam_jax.runtime.files import atomic_path


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: float | None = None) -> None:
    """Saves `fig` as a PNG at `path` (all or nothing; `dpi` None: the figure's own) and
    closes it."""
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi or "figure")
    finally:
        plt.close(fig)
