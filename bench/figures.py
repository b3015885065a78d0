"""Saving matplotlib figures the same way everywhere (PNG, 100 dpi)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write `path` (creating its folder) and close `fig`; returns the path."""
    import matplotlib.pyplot as plt  # here, so that importing a command stays fast

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
