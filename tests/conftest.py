import os
import sys
from pathlib import Path

import pytest

from ferkit.data import DATA_ENV
from ferkit.sample import cartoon_faces

# The repository root, so that tests import the browser helpers they share with the benchmarks
# (benchmarks/common.py) as benchmarks.common, whatever pytest's import mode.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def cartoon():
    """84 generated faces, 4 per class and split."""
    return cartoon_faces(per_class_and_split=4, seed=1)


@pytest.fixture(scope="session")
def real_fer2013() -> Path:
    """The real FER-2013, found through $FERKIT_DATA (.ci/run points it at ../shared)."""
    value = os.environ.get(DATA_ENV)
    if not value:
        pytest.skip(f"real FER-2013 not configured: set {DATA_ENV}=/path/to/fer2013.zip to run this test")
    path = Path(value)
    if not path.exists():
        pytest.skip(f"{DATA_ENV}={value} does not exist")
    return path


@pytest.fixture(scope="session")
def random_model(tmp_path_factory):
    """An untrained but complete ferkit model on disk: enough to test the plumbing."""
    keras = pytest.importorskip("keras")
    from ferkit.architectures import build_model
    from ferkit.model import ModelMeta, save_model

    keras.utils.set_random_seed(0)
    stem = tmp_path_factory.mktemp("model") / "fer"
    save_model(build_model("vgg_small"), stem, ModelMeta(architecture="vgg_small"))
    return stem
