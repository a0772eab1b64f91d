"""Plots written next to report.md (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confidence_histogram(method: str, confidences: dict[str, np.ndarray], path: str | Path) -> Path:
    """Histogram of true-label confidence on forget vs retain vs test for one model.

    After good unlearning the forget curve sits on the test curve, below the retain curve.
    """
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(0, 1, 31)
    for name, values in confidences.items():
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.6, label=f"{name} (n={len(values)})")
    ax.set_xlabel("confidence in the true label")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.set_title(method)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def curves(series: dict[str, dict[str, list[float]]], xlabel: str, path: str | Path,
           marker_x: float | None = None, title: str = "") -> Path:
    """One panel per metric; `series[metric][label]` is a list of y values over x = 1..n.

    `marker_x` draws a vertical line (e.g. the withdrawal round).
    """
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.4), squeeze=False)
    for ax, (metric, lines) in zip(axes[0], series.items()):
        for label, ys in lines.items():
            xs = ys[0] if isinstance(ys, tuple) else range(1, len(ys) + 1)
            ax.plot(list(xs), ys[1] if isinstance(ys, tuple) else ys, marker="o", markersize=3, label=label)
        if marker_x is not None:
            ax.axvline(marker_x, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
