"""The notebooks' short import surface onto the ferkit package (imports only)."""

from ferkit.callbacks import LivePlot, ThresholdStop  # noqa: F401
from ferkit.data import (  # noqa: F401
    CLASS_NAMES,
    DATA_ENV,
    SPLITS,
    SUBSETS,
    DatasetError,
    FerDataset,
    dataset_path,
    download_fer2013,
    image_stats,
    load_fer2013,
    select_classes,
    summary_table,
    write_csv,
    write_npz,
)
from ferkit.evaluation import evaluate, format_metrics, write_results  # noqa: F401
from ferkit.architectures import build_model  # noqa: F401
from ferkit.model import load_model, save_model  # noqa: F401
from ferkit.plots import plot_class_balance, plot_confusion_matrix, plot_samples, plot_training_curves  # noqa: F401
from ferkit.sample import cartoon_faces, write_image_layout  # noqa: F401
from ferkit.augmentation import Augmentation  # noqa: F401
from ferkit.history import join_histories, read_history  # noqa: F401
from ferkit.training import TrainConfig, train  # noqa: F401
