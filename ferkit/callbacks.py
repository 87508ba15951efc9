"""Keras callbacks used in training; plain Keras, nothing ferkit-specific to load."""

from __future__ import annotations

import os
import time
from pathlib import Path

import keras
import numpy as np

from ferkit.evaluation import MIN_SUPPORT, class_recalls
from ferkit.files import require_regular_file
from ferkit.inference import predict_probabilities
from ferkit.plots import plot_training_curves


class ThresholdStop(keras.callbacks.Callback):
    """Stop training once ``accuracy >= accuracy`` and ``val_accuracy >= val_accuracy``.

    Both are checked at the end of every epoch on the logged metrics (names
    configurable). ``stopped_epoch`` is the 1-based epoch that met them, or
    None. A missing metric is an error, not a silent no-op.
    """

    def __init__(self, accuracy: float = 0.75, val_accuracy: float = 0.71,
                 monitor: str = "accuracy", val_monitor: str = "val_accuracy", verbose: int = 1):
        super().__init__()
        self.accuracy, self.val_accuracy = accuracy, val_accuracy
        self.monitor, self.val_monitor, self.verbose = monitor, val_monitor, verbose
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None):
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        missing = [m for m in (self.monitor, self.val_monitor) if m not in logs]
        if missing:
            raise ValueError(f"ThresholdStop needs {', '.join(missing)} in the epoch logs, which hold "
                             f"{', '.join(sorted(logs)) or 'nothing'}; pass validation_data and metrics=['accuracy']")
        train_value, val_value = float(logs[self.monitor]), float(logs[self.val_monitor])
        if train_value >= self.accuracy and val_value >= self.val_accuracy:
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True
            if self.verbose:
                print(f"\nThresholdStop: epoch {epoch + 1} reached {self.monitor} {train_value:.4f} >= "
                      f"{self.accuracy} and {self.val_monitor} {val_value:.4f} >= {self.val_accuracy}; stopping.")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` to each epoch's logs, so a history log (CSVLogger
    placed after this callback) records the true cost of a resumed run."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._started, 2)


class WeightAverage(keras.callbacks.Callback):
    """Running mean of the model's weights at the end of every epoch from ``start_epoch`` (0-based) on.

    Stochastic weight averaging (Izmailov et al., 2018): epochs trained at a
    constant, moderate learning rate land at different points around a wide
    minimum, and their mean generalises better than any one of them. The mean
    covers every weight, BatchNorm statistics included; recompute those for the
    averaged weights (``ferkit.training.recompute_batchnorm``) before using it.

    ``average`` is the list of arrays (``model.get_weights()`` order) and
    ``epochs`` the 0-based epochs in it. With ``path`` (an .npz), both are saved
    after every epoch and reloaded when training begins, so a resumed run goes
    on averaging where it stopped and never counts an epoch twice.
    """

    def __init__(self, start_epoch: int, path: str | os.PathLike | None = None):
        super().__init__()
        self.start_epoch, self.path = start_epoch, Path(path) if path else None
        self.average: list[np.ndarray] | None = None
        self.epochs: list[int] = []

    def on_train_begin(self, logs=None):
        if self.path is not None and self.path.exists():
            with np.load(require_regular_file(self.path, "weight average checkpoint")) as saved:
                self.epochs = [int(e) for e in saved["epochs"]]
                self.average = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.start_epoch or epoch in self.epochs:
            return
        weights = self.model.get_weights()
        count = len(self.epochs)
        self.average = weights if self.average is None else [
            mean + (w - mean) / (count + 1) for mean, w in zip(self.average, weights)]
        self.epochs.append(epoch)
        if self.path is not None:
            # Written beside and renamed, so a kill mid-write leaves the previous average whole.
            partial = self.path.with_name(self.path.stem + ".partial.npz")
            np.savez(partial, epochs=np.array(self.epochs), **{f"w{i}": w for i, w in enumerate(self.average)})
            os.replace(partial, self.path)


class LivePlot(keras.callbacks.Callback):
    """Redraws accuracy and loss curves after every epoch in a notebook output."""

    def __init__(self, every: int = 1):
        super().__init__()
        self.every, self.history = every, []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch, **(logs or {})})
        if (epoch + 1) % self.every:
            return
        import matplotlib.pyplot as plt  # notebooks only: neither is needed to train
        from IPython.display import clear_output, display

        clear_output(wait=True)
        figure = plot_training_curves(self.history)
        display(figure)
        plt.close(figure)


class PhotoValidation(keras.callbacks.Callback):
    """Each epoch, score held-out photo crops and add ``val_photos_macro_recall`` and ``val_selection`` to the logs.

    ``val_photos_macro_recall`` is the mean recall over the classes with at
    least ``min_support`` held-out photos (photos without a found face count
    as misses); ``val_selection``, what the best epoch is chosen by, is its
    mean with PublicTest accuracy (``val_accuracy``), so neither is traded
    away for the other. Place it before the callbacks that read those logs.
    """

    def __init__(self, crops: np.ndarray, labels: np.ndarray, found: np.ndarray, num_classes: int,
                 min_support: int = MIN_SUPPORT):
        super().__init__()
        self.crops, self.labels, self.found = crops, labels, found
        support = np.bincount(labels, minlength=num_classes)
        self.counted = np.flatnonzero(support >= min_support)
        if not len(self.counted):
            raise ValueError(f"the held-out photos have no class with {min_support}+ photos "
                             f"(counts {support.tolist()}); hold out a larger part (--photos-held-out), add "
                             "photos, or hold none out (--photos-held-out 0: the epoch chosen on PublicTest alone)")

    def on_epoch_end(self, epoch, logs=None):
        predicted = np.full(len(self.labels), -1)
        predicted[self.found] = predict_probabilities(self.model, self.crops[self.found]).argmax(1)
        macro = float(class_recalls(predicted, self.labels, self.counted).mean())
        if logs is not None:
            logs["val_photos_macro_recall"] = macro
            logs["val_selection"] = (float(logs.get("val_accuracy", 0.0)) + macro) / 2
