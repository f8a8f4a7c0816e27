"""The training-curve PNG the encoder jobs write: one line per measured series, by step."""

from __future__ import annotations

from pathlib import Path


def plot_by_step(
    curve: list[dict], series: dict[str, str], ylabel: str, title: str, path: Path
) -> None:
    """``series``: a key of the curve's points -> its legend label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in curve]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for (key, label), marker in zip(series.items(), "osd^"):
        axis.plot(steps, [p[key] for p in curve], marker=marker, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
