"""Evaluation: accuracy on PublicTest and PrivateTest, per-class scores, plots.

Models are selected on PublicTest during training; PrivateTest is the number
to report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ferkit import plots
from ferkit.data import FerDataset, select_classes
from ferkit.files import write_text
from ferkit.inference import predict_probabilities
from ferkit.model import ModelMeta

if TYPE_CHECKING:  # only named in annotations: pandas is imported where the table is made
    import pandas


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


# ----------------------------------------------------------------------------
# Labelled photos: the whole pipeline (detect, crop, classify)

#: Classes with fewer images than this are reported but left out of the macro recall (their recall is noise).
MIN_SUPPORT = 40
#: Rows of the per-photo table for a photo where no face was found.
NO_FACE = "(no face)"


def class_recalls(predicted: np.ndarray, labels: np.ndarray, classes) -> np.ndarray:
    """Recall of each class in ``classes``: the share of its photos ``predicted`` as it (-1, no face, is a miss)."""
    return np.array([(predicted[labels == k] == k).mean() for k in classes])


def evaluate_photos(model, meta: ModelMeta, photos, crops, min_support: int = MIN_SUPPORT, tta: bool = False,
                    resamples: int = 1000, seed: int = 0) -> tuple[dict, "pandas.DataFrame"]:
    """Pipeline metrics on a labelled photo set (:mod:`ferkit.photos`): ``(metrics, per-photo table)``.

    A photo whose face is not found counts as a miss for its class.
    ``metrics``: accuracy, macro recall (mean recall over the classes with at
    least ``min_support`` photos), faces found, per-class precision/recall/F1,
    the confusion matrix (found faces only), and, where the set names the
    person in each photo, 95% intervals for accuracy and macro recall from
    ``resamples`` resamplings of people with replacement.
    """
    import pandas as pd

    names = list(meta.class_names)
    probabilities = np.zeros((len(photos), len(names)), np.float32)
    if crops.found.any():
        probabilities[crops.found] = predict_probabilities(model, crops.crops[crops.found], tta=tta)
    predicted = np.where(crops.found, probabilities.argmax(1), -1)
    matrix = confusion_matrix(photos.labels[crops.found], predicted[crops.found], len(names))
    support = np.bincount(photos.labels, minlength=len(names))
    counted = (support >= min_support) & (support > 0)
    correct = predicted == photos.labels
    recall = np.full(len(names), np.nan)
    recall[support > 0] = class_recalls(predicted, photos.labels, np.flatnonzero(support))
    scores = per_class_scores(matrix, names)  # precision over the faces found; recall counts missed faces too
    metrics = {
        "source": photos.source, "photos": len(photos), "faces_found": float(crops.found.mean()),
        "accuracy": float(correct.mean()),
        "macro_recall": float(recall[counted].mean()) if counted.any() else None,
        "macro_recall_classes": [n for n, c in zip(names, counted) if c], "min_support": min_support,
        "per_class": {name: {**scores[name], "recall": float(recall[k]) if support[k] else None,
                             "support": int(support[k])} for k, name in enumerate(names)},
        "class_names": names, "confusion_matrix": matrix.tolist(),
        "confusion_matrix_normalized": (matrix / np.maximum(matrix.sum(1, keepdims=True), 1)).round(4).tolist(),
        "unknown_labels": photos.unknown_labels, "tta": tta,
    }
    if photos.identities is not None and resamples:
        metrics["intervals"] = identity_intervals(photos.identities, photos.labels, correct, counted, resamples, seed)
        metrics["people"] = len(set(photos.identities))
    table = pd.DataFrame({"file": [str(f) for f in photos.files], "label": [names[k] for k in photos.labels],
                          "identity": photos.identities or [""] * len(photos), "face_found": crops.found,
                          "x": crops.boxes[:, 0], "y": crops.boxes[:, 1], "width": crops.boxes[:, 2],
                          "height": crops.boxes[:, 3], "detection_score": crops.scores,
                          "predicted": [names[k] if k >= 0 else NO_FACE for k in predicted],
                          "score": np.where(crops.found, probabilities.max(1), np.nan),
                          **{f"p_{name}": np.where(crops.found, probabilities[:, k], np.nan)
                             for k, name in enumerate(names)}})
    return metrics, table


def identity_intervals(identities, labels: np.ndarray, correct: np.ndarray, counted: np.ndarray, resamples: int,
                       seed: int = 0) -> dict:
    """95% percentile intervals of accuracy and macro recall, resampling people (not photos) with replacement.

    Photos of one person are not independent; resampling whole people gives
    intervals that say how much the figures would move on other people.
    """
    people, person = np.unique(np.asarray(identities), return_inverse=True)
    k = len(counted)
    # Per person: photos per class, and correct photos per class.
    totals = np.zeros((len(people), k))
    hits = np.zeros((len(people), k))
    np.add.at(totals, (person, labels), 1)
    np.add.at(hits, (person, labels), correct.astype(float))
    draws = np.random.default_rng(seed).multinomial(len(people), np.full(len(people), 1 / len(people)), resamples)
    total, hit = draws @ totals, draws @ hits  # (resamples, k)
    accuracy = hit.sum(1) / total.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(total > 0, hit / total, np.nan)[:, counted]
    # A resampling that drew none of the counted classes' photos has no macro recall; it is left out.
    drawn = ~np.isnan(recall).all(axis=1) if counted.any() else np.zeros(resamples, bool)
    macro = np.nanmean(recall[drawn], axis=1)

    def interval(values):
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else None

    return {"resamples": resamples, "accuracy": interval(accuracy), "macro_recall": interval(macro)}


def format_photo_metrics(metrics: dict) -> str:
    """The photo metrics as text: headline figures with intervals, then one line per class."""
    intervals = metrics.get("intervals", {})
    shown = lambda name: (f"{metrics[name]:.3f}" + (f" (95% {intervals[name][0]:.3f}-{intervals[name][1]:.3f}, "
                                                     f"resampling {metrics['people']} people)"
                                                     if intervals.get(name) else "")) if metrics[name] is not None else "-"
    found = ("each classified whole as a face crop" if metrics.get("face_crops")
             else f"faces found {metrics['faces_found']:.1%}")
    lines = [f"{metrics['source']}: {metrics['photos']} photos, {found}",
             f"accuracy      {shown('accuracy')}",
             f"macro recall  {shown('macro_recall')}  over {', '.join(metrics['macro_recall_classes']) or 'no class'}"
             f" (classes with {metrics['min_support']}+ photos)",
             "", f"{'class':<10} {'photos':>6} {'recall':>7} {'precision':>9}"]
    for name, scores in metrics["per_class"].items():
        recall = "-" if scores["recall"] is None else f"{scores['recall']:.3f}"
        lines.append(f"{name:<10} {scores['support']:>6} {recall:>7} {scores['precision']:>9.3f}")
    if metrics["unknown_labels"]:
        lines.append("left out, not among the model's classes: " + ", ".join(
            f"{label} ({count})" for label, count in sorted(metrics["unknown_labels"].items())) +
            "; map them with --labels THEIRS=OURS")
    return "\n".join(lines)


def write_photo_results(metrics: dict, table, results_dir: str | Path) -> dict[str, Path]:
    """metrics.json, photos.csv (one row per photo) and confusion_matrix.png into ``results_dir``."""
    results_dir = Path(results_dir)
    paths = {"metrics": results_dir / "metrics.json", "photos": results_dir / "photos.csv",
             "confusion_matrix": results_dir / "confusion_matrix.png"}
    write_text(paths["metrics"], json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    write_text(paths["photos"], table.to_csv(index=False, float_format="%.4f"))
    macro = metrics["macro_recall"]
    title = f"{Path(metrics['source']).name}: accuracy {metrics['accuracy']:.1%}" + (
        f", macro recall {macro:.3f}" if macro is not None else "")
    plots.close(plots.plot_confusion_matrix(metrics["confusion_matrix_normalized"], metrics["class_names"],
                                            paths["confusion_matrix"], title))
    return paths
