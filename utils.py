"""The notebooks' short import surface onto the ferkit package (imports only)."""

from ferkit.data import (  # noqa: F401
    CLASS_NAMES,
    DATA_ENV,
    SPLITS,
    SUBSETS,
    DatasetError,
    FerDataset,
    image_stats,
    load_fer2013,
    select_classes,
    summary_table,
    write_csv,
    write_npz,
)
from ferkit.sample import cartoon_faces, write_image_layout  # noqa: F401
