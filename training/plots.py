"""Plots of training runs."""

from __future__ import annotations

import json
from pathlib import Path


def write_loss_curve(log_history: list[dict], png_path: str | Path, title: str = "Stage 2 spatial SFT") -> Path:
    """Plot training and evaluation loss per step from `trainer.state.log_history`; the history goes next to it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.with_suffix(".json").write_text(json.dumps(log_history, indent=1) + "\n")
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        axis.plot(*zip(*train), label="train loss (answer tokens)", color="tab:blue")
    if evaluation:
        axis.plot(*zip(*evaluation), "o--", label="eval loss (answer tokens)", color="tab:orange")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (nats/token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
    return png_path
