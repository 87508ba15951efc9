"""Plots people would rather look than read: samples, class balance, curves, confusion matrix.

Each function returns the matplotlib figure (a notebook shows it) and saves
it when given a path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferkit.data import FerDataset
from ferkit.files import atomic_path
from ferkit.settings import EMOTION_COLORS, SPLITS

# matplotlib is imported where a figure is drawn: importing ferkit must stay fast.


def save_figure(fig, path) -> None:
    """Save a figure (format from the suffix) to a temporary file, renamed into place when complete."""
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=120)


def pyplot():
    import matplotlib

    try:
        from IPython import get_ipython  # optional: present only in notebooks

        interactive = get_ipython() is not None
    except ImportError:
        interactive = False
    if not interactive:
        matplotlib.use("Agg")  # no display needed from scripts and the CLI
    import matplotlib.pyplot as plt

    return plt


def close(figure) -> None:
    """Free a figure that was only saved, not shown."""
    pyplot().close(figure)


def plot_samples(data: FerDataset, per_class: int = 8, seed: int = 0, path: str | Path | None = None):
    """A grid with one row per class of ``per_class`` random Training images."""
    plt = pyplot()
    rng = np.random.default_rng(seed)
    train = data.split("Training") if (data.splits == 0).any() else data
    fig, axes = plt.subplots(len(data.class_names), per_class, figsize=(per_class * 1.1, len(data.class_names) * 1.2))
    for row, name in enumerate(data.class_names):
        rows = np.flatnonzero(train.labels == row)
        chosen = rng.choice(rows, min(per_class, len(rows)), replace=False) if len(rows) else []
        for col in range(per_class):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(chosen):
                ax.imshow(train.images[chosen[col]], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(name, loc="left", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_class_balance(data: FerDataset, path: str | Path | None = None):
    """Images per class, one bar group per split."""
    plt = pyplot()
    counts = data.counts()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(SPLITS)
    x = np.arange(len(data.class_names))
    for i, split in enumerate(SPLITS):
        ax.bar(x + i * width, [counts[split][c] for c in data.class_names], width, label=split)
    ax.set_xticks(x + width, data.class_names)
    ax.set_ylabel("images")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("class balance (log scale)")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_confusion_matrix(matrix_normalized, class_names, path: str | Path | None = None, title: str = ""):
    """Save a row-normalised confusion matrix as a PNG; returns the figure."""
    plt = pyplot()

    matrix = np.asarray(matrix_normalized)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                    color="white" if matrix[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (rows sum to 1)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_training_curves(history: list[dict], path: str | Path | None = None):
    """Accuracy and loss per epoch, training and validation (PublicTest); returns the figure."""
    plt = pyplot()

    epochs = [int(r["epoch"]) + 1 for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, [r[metric] for r in history], label=f"train {metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in history], label=f"PublicTest {metric}")
        for before, row in zip(history, history[1:]):
            if row.get("stage", 1) != before.get("stage", 1):  # a model trained in stages (join_histories)
                ax.axvline(int(row["epoch"]) + 0.5, color="grey", linestyle="--", linewidth=1)
                ax.text(int(row["epoch"]) + 1, ax.get_ylim()[1], f" stage {int(row['stage'])}",
                        va="top", fontsize=8, color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_prediction(result, path: str | Path | None = None):
    """The annotated image beside one probability bar chart per face (an ImagePrediction)."""
    plt = pyplot()
    n = max(1, len(result.faces))
    fig = plt.figure(figsize=(6 + 3.2 * min(n, 4), 5))
    grid = fig.add_gridspec(n, 2, width_ratios=[2, 1.2])
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(result.annotate()[:, :, ::-1])
    ax.axis("off")
    ax.set_title(result.message, fontsize=9)
    for i, face in enumerate(result.faces):
        bars = fig.add_subplot(grid[i, 1])
        names = list(face.probabilities)
        values = [face.probabilities[k] for k in names]
        bars.barh(names, values, color=["tab:orange" if k == face.label else "tab:gray" for k in names])
        bars.set_xlim(0, 1)
        bars.invert_yaxis()
        bars.set_title(f"face {i}: {face.label} {face.score:.0%}", fontsize=9)
        bars.tick_params(labelsize=8)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_emotion_timeline(table, path: str | Path | None = None):
    """Each class's probability over a video's time, one panel per tracked face (``predict_video``'s table)."""
    plt = pyplot()
    classes = [c[2:] for c in table.columns if c.startswith("p_")]
    ids = sorted(table["face_id"].unique()) if len(table) else []
    shown = ids[:4]
    fig, axes = plt.subplots(max(1, len(shown)), 1, figsize=(8, 2.2 * max(1, len(shown))), squeeze=False, sharex=True)
    for ax, face_id in zip(axes[:, 0], shown):
        rows = table[table["face_id"] == face_id]
        for name in classes:
            color = EMOTION_COLORS.get(name)  # the colours the annotated video and the page use
            ax.plot(rows["time"], rows[f"p_{name}"], label=name, linewidth=1.2,
                    color=None if color is None else tuple(c / 255 for c in color[::-1]))
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"face {face_id}", fontsize=9)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no face found in the video", ha="center", va="center")
    else:
        axes[0, 0].legend(ncol=len(classes), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.35))
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig

