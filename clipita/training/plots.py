"""The training curve: loss per step (raw and smoothed) and validation retrieval quality per evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training_curve(
    losses: Sequence[tuple[int, float]], evaluations: Sequence[dict], path: str | Path, title: str = ""
) -> Path:
    """`losses`: (step, loss) pairs; `evaluations`: {"step", "P@10", "mAP@10"} dicts. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    if losses:
        steps, values = zip(*losses)
        window = max(1, len(values) // 50)
        ax_loss.plot(
            steps, values, color="tab:blue", alpha=0.3 if window > 1 else 1.0, linewidth=0.8, label="loss"
        )
        if window > 1:
            smooth = moving_average(values, window)
            ax_loss.plot(steps[window - 1 :], smooth, color="tab:blue", label=f"mean of {window} steps")
    ax_loss.set(xlabel="step", ylabel="contrastive loss", title="training loss")
    ax_loss.legend(loc="upper right")
    ax_loss.grid(alpha=0.3)
    if evaluations:
        steps = [e["step"] for e in evaluations]
        for metric, color in (("mAP@10", "tab:green"), ("P@10", "tab:orange")):
            values = [np.nan if e.get(metric) is None else e[metric] for e in evaluations]
            ax_eval.plot(steps, values, marker="o", color=color, label=metric)
        ax_eval.legend(loc="lower right")
    ax_eval.set(xlabel="step", ylabel="validation score", title="validation retrieval")
    ax_eval.set_ylim(bottom=0)
    ax_eval.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
