"""Small charts as Markdown images, for Dagster metadata (the UI renders Markdown, not files)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable


def chart_markdown(title: str, draw: Callable, size: tuple[float, float] = (7, 3.5)) -> str:
    """Call draw(axis) on a new figure and return it as an inline PNG in Markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=size)
    draw(axis)
    axis.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return f"![{title}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"
