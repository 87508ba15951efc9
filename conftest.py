"""Notebook runs under pytest (nbval): a quick subset, outputs kept out of the repository.

The committed notebooks show full runs; under `python -m pytest` they run
again on a small subset (FERKIT_NB_* settings below, unless already set) and
write their model and results into a temporary folder, never over the shipped
fer.json / fer.h5 / results/.
"""

import os
import tempfile
from pathlib import Path

import pytest

_scratch = Path(tempfile.mkdtemp(prefix="ferkit-nb-"))
for key, value in {
    "FERKIT_NB_LIMIT": "600",
    "FERKIT_NB_EPOCHS": "2",
    "FERKIT_NB_FINETUNE_EPOCHS": "1,1",
    "FERKIT_NB_ARCHITECTURE": "vgg_small",
    "FERKIT_NB_CHECKPOINTS": str(_scratch / "checkpoints"),
    "FERKIT_NB_OUT": str(_scratch / "fer"),
    "FERKIT_NB_RESULTS": str(_scratch / "results"),
    "TF_CPP_MIN_LOG_LEVEL": "3",
}.items():
    os.environ.setdefault(key, value)

if "FERKIT_WEBCAM_FILE" not in os.environ:
    # via_webcam.ipynb's camera under nbval: the embedded sample photo, as a file.
    try:
        import cv2

        from ferkit.images import sample_image

        cv2.imwrite(str(_scratch / "webcam.png"), sample_image())
        os.environ["FERKIT_WEBCAM_FILE"] = str(_scratch / "webcam.png")
    except Exception:  # scikit-image missing: the notebook test will say what failed
        pass

NEEDS_DATASET = {"train_model.ipynb"}
NEEDS_MODEL = {"via_image.ipynb", "via_webcam.ipynb"}


def pytest_configure(config):
    # `python -m pytest` runs the notebooks too, whenever nbval is installed.
    if config.pluginmanager.hasplugin("nbval") and not config.option.nbval_lax:
        config.option.nbval = True
        config.option.nbval_current_env = True


def pytest_collection_modifyitems(config, items):
    data = os.environ.get("FERKIT_DATA")
    have_data = bool(data) and Path(data).exists()
    have_model = (Path(__file__).parent / "ferkit" / "models" / "fer.json").exists()
    for item in items:
        name = Path(str(item.fspath)).name
        if name in NEEDS_DATASET and not have_data:
            item.add_marker(pytest.mark.skip(reason=f"{name} needs FER-2013: set FERKIT_DATA=/path/to/fer2013.zip"))
        if name in NEEDS_MODEL and not have_model:
            item.add_marker(pytest.mark.skip(reason=f"{name} needs the trained model fer.json + fer.h5"))
