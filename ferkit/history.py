"""A training run's history: the per-epoch rows ``train`` logs to history.csv in its checkpoint folder.

Training reads it to resume; ``evaluate`` reads it (one folder per stage of a
model trained in turns) for the training curves.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ferkit import files

#: Where ``train`` keeps per-epoch checkpoints and history.csv unless told otherwise.
DEFAULT_CHECKPOINT_DIR = "checkpoints/fer"
#: The per-epoch log in a checkpoint folder (Keras's CSVLogger writes it).
HISTORY_FILE = "history.csv"


def read_history(path: Path) -> list[dict]:
    """The per-epoch rows of a training run's history.csv ([] if there is none)."""
    if not path.exists() and not path.is_symlink():
        return []
    text = files.read_text(path, "training history", 64 * 2**20)
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]


def join_histories(histories: list[list[dict]]) -> list[dict]:
    """One history from the stages of a model trained in turns (``init_weights``).

    Epochs are renumbered to run on from stage to stage, and each row gets its
    1-based ``stage``, so curves show the whole training of the model.
    """
    joined = []
    for stage, history in enumerate(histories, start=1):
        offset = len(joined)
        joined += [{**row, "epoch": offset + i, "stage": stage} for i, row in enumerate(history)]
    return joined


def stage_histories(checkpoint_dirs: list[str | Path]) -> tuple[list[dict], list[Path]]:
    """The joined history of the stages trained in ``checkpoint_dirs`` (in order), and the history files
    that are missing: a stage without one adds no rows."""
    paths = [Path(folder) / HISTORY_FILE for folder in checkpoint_dirs]
    histories = [read_history(path) for path in paths]
    return join_histories(histories), [path for path, history in zip(paths, histories) if not history]
