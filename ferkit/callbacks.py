"""Keras callbacks used in training; plain Keras, nothing ferkit-specific to load."""

from __future__ import annotations

import time

import keras


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


class LivePlot(keras.callbacks.Callback):
    """Redraws accuracy and loss curves after every epoch in a notebook output."""

    def __init__(self, every: int = 1):
        super().__init__()
        self.every, self.history = every, []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append({"epoch": epoch, **(logs or {})})
        if (epoch + 1) % self.every:
            return
        import matplotlib.pyplot as plt
        from IPython.display import clear_output, display

        from ferkit.plots import plot_training_curves

        clear_output(wait=True)
        figure = plot_training_curves(self.history)
        display(figure)
        plt.close(figure)
