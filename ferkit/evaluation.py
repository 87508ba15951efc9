"""Evaluation: accuracy on PublicTest and PrivateTest, per-class scores, plots.

Models are selected on PublicTest during training; PrivateTest is the number
to report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ferkit import plots
from ferkit.files import write_text
from ferkit.data import FerDataset, select_classes
from ferkit.model import ModelMeta, predict_probabilities


def align_to_model(data: FerDataset, meta: ModelMeta) -> FerDataset:
    """Select and merge ``data``'s classes the way the model was trained (its label_map)."""
    if tuple(meta.class_names) == tuple(data.class_names):
        return data
    merge = {orig: new for orig, new in meta.label_map.items() if new is not None and new != orig}
    return select_classes(data, list(meta.class_names), merge)


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(k, k) counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (true, predicted), 1)
    return matrix


def per_class_scores(matrix: np.ndarray, class_names) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    scores = {}
    for i, name in enumerate(class_names):
        tp = matrix[i, i]
        precision = tp / matrix[:, i].sum() if matrix[:, i].sum() else 0.0
        recall = tp / matrix[i].sum() if matrix[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                        "support": int(matrix[i].sum())}
    return scores


def evaluate(model, meta: ModelMeta, data: FerDataset, tta: bool = True) -> dict:
    """Metrics for PublicTest and PrivateTest (plain and with test-time augmentation).

    Returns a JSON-ready dict: ``{split: {"accuracy", "accuracy_tta", "per_class",
    "confusion_matrix", "confusion_matrix_normalized"}}`` plus ``class_names``.
    """
    data = align_to_model(data, meta)
    results: dict = {"class_names": list(meta.class_names)}
    for split in ("PublicTest", "PrivateTest"):
        part = data.split(split)
        if len(part) == 0:
            continue
        probabilities = predict_probabilities(model, part.images)
        predicted = probabilities.argmax(1)
        matrix = confusion_matrix(part.labels, predicted, len(meta.class_names))
        entry = {"images": len(part), "accuracy": float((predicted == part.labels).mean())}
        if tta:
            tta_predicted = predict_probabilities(model, part.images, tta=True).argmax(1)
            entry["accuracy_tta"] = float((tta_predicted == part.labels).mean())
        entry["per_class"] = per_class_scores(matrix, meta.class_names)
        entry["confusion_matrix"] = matrix.tolist()
        entry["confusion_matrix_normalized"] = (matrix / np.maximum(matrix.sum(1, keepdims=True), 1)).round(4).tolist()
        results[split] = entry
    return results


def format_metrics(metrics: dict) -> str:
    """Accuracy per split (with TTA when measured) and PrivateTest's per-class scores, as text."""
    lines = [f"{'split':<12} {'images':>6} {'accuracy':>9} {'with TTA':>9}"]
    for split in ("PublicTest", "PrivateTest"):
        if split in metrics:
            m = metrics[split]
            tta = f"{m['accuracy_tta']:.4f}" if "accuracy_tta" in m else "-"
            lines.append(f"{split:<12} {m['images']:>6} {m['accuracy']:>9.4f} {tta:>9}")
    if "PrivateTest" in metrics:
        lines += ["", "PrivateTest per class:", f"{'class':<10} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}"]
        for name, s in metrics["PrivateTest"]["per_class"].items():
            lines.append(f"{name:<10} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['f1']:>6.3f} {s['support']:>7}")
    return "\n".join(lines)


def write_results(metrics: dict, history: list[dict], results_dir: str | Path = "results",
                  extra: dict | None = None) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png and training_curves.png into ``results_dir``."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    files = {"metrics": results_dir / "metrics.json"}
    write_text(files["metrics"], json.dumps({**metrics, **(extra or {})}, indent=2) + "\n")
    if "PrivateTest" in metrics:
        files["confusion_matrix"] = results_dir / "confusion_matrix.png"
        accuracy = metrics["PrivateTest"]["accuracy"]
        figure = plots.plot_confusion_matrix(metrics["PrivateTest"]["confusion_matrix_normalized"],
                                             metrics["class_names"], files["confusion_matrix"],
                                             f"PrivateTest, accuracy {accuracy:.1%}")
        plots.close(figure)
    if history:
        files["training_curves"] = results_dir / "training_curves.png"
        plots.close(plots.plot_training_curves(history, files["training_curves"]))
    return files
