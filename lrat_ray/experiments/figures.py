"""Figures of the experiments: matplotlib without a display, saved atomically."""

from __future__ import annotations

import os


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display on the machines these run on)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Write ``fig`` as a PNG at ``path`` through a temporary file (a reader never sees half a
    plot), and close it."""
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    os.replace(tmp, path)
