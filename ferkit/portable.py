"""Model files that load on the Keras versions people have, not only on the one that wrote them.

Each Keras release adds constructor arguments and writes them into every
config, default values included (``input_axes`` on initializers in 3.15,
``renorm`` on BatchNormalization in 3.14, ``quantization_config`` on Dense),
and an older Keras refuses a config with an argument it does not know: the
shipped model would not load in Google Colab. :func:`portable_config` drops
every argument whose value is its default, so each Keras fills in its own;
only arguments a model really sets are written.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import sys
import zipfile
from functools import lru_cache

from ferkit.files import stderr_descriptor_to

# keras, tensorflow and h5py are imported where needed: importing ferkit must stay fast.

#: The oldest pair ferkit's models are tested on (CI loads and runs the shipped model there).
#: Keras 3.0-3.3 cannot rebuild an average's nested networks.
MIN_KERAS = (3, 4)
MIN_TENSORFLOW = (2, 16)


#: Set to 1 to see TensorFlow's start-up logs (``python -m ferkit --verbose`` sets it).
VERBOSE_ENV = "FERKIT_VERBOSE"


def import_keras():
    """Import Keras (and TensorFlow under it) without TensorFlow's start-up chatter; returns ``keras``.

    TensorFlow 2.19+ logs oneDNN notes and, on every machine without a GPU,
    a CUDA probe error through absl before any log level applies
    (``TF_CPP_MIN_LOG_LEVEL`` no longer silences them), so the import and
    device discovery run with the process's stderr pointed at /dev/null.
    Python errors are unaffected: they are raised after stderr is restored.
    Nothing is hidden once TensorFlow is loaded, or with ``FERKIT_VERBOSE=1``.
    """
    if "keras" not in sys.modules and os.environ.get(VERBOSE_ENV) != "1":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            with stderr_descriptor_to(devnull):
                if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
                    try:
                        import tensorflow as tf
                    except ImportError:
                        pass  # Keras says what is missing when it is imported below
                    else:
                        tf.config.list_logical_devices()  # device discovery logs the CUDA probe
                import keras  # noqa: F401
        finally:
            os.close(devnull)
    import keras

    return keras


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) if piece else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_versions() -> None:
    """Raise RuntimeError naming the versions needed if this Keras or TensorFlow is too old for ferkit."""
    import keras

    problems = []
    if _version(keras.__version__) < MIN_KERAS:
        problems.append(f"Keras {keras.__version__} (needs {'.'.join(map(str, MIN_KERAS))} or newer)")
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        if _version(tf.__version__) < MIN_TENSORFLOW:
            problems.append(f"TensorFlow {tf.__version__} (needs {'.'.join(map(str, MIN_TENSORFLOW))} or newer)")
    if problems:
        raise RuntimeError("ferkit's models need newer libraries than this environment has: " + ", ".join(problems)
                           + f". Upgrade with `pip install -U 'keras>={'.'.join(map(str, MIN_KERAS))}' "
                             f"'tensorflow>={'.'.join(map(str, MIN_TENSORFLOW))}'`")


def portable_config(config):
    """A Keras model config (``json.loads(model.to_json())``) without arguments left at their defaults.

    Every object in the config that names its class (layers, initializers,
    regularizers, dtype policies) loses each argument that equals the
    default of its class's constructor, provided that the current Keras
    rebuilds the object without it to the same config: so the result loads
    here into exactly the same model, and on older Keras versions that do not
    know those arguments. Models (``Functional``) keep their config whole.
    """
    if isinstance(config, list):
        return [portable_config(value) for value in config]
    if not isinstance(config, dict):
        return config
    config = {key: portable_config(value) for key, value in config.items()}
    inner = config.get("config")
    if isinstance(inner, dict) and isinstance(config.get("module"), str) and isinstance(config.get("class_name"), str):
        config["config"] = _without_defaults(config["module"], config["class_name"], inner)
    return config


def portable_json(model) -> str:
    """``model.to_json()``, made portable with :func:`portable_config`."""
    return json.dumps(portable_config(json.loads(model.to_json())))


@lru_cache(maxsize=None)
def _class_defaults(module: str, class_name: str):
    """``(class, {argument: default})`` for a config's class, or None where it cannot be rebuilt alone."""
    import keras

    try:
        cls = getattr(importlib.import_module(module), class_name)
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    if not hasattr(cls, "from_config") or (isinstance(cls, type) and issubclass(cls, keras.Model)):
        return None
    return cls, {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _same(a, b) -> bool:
    as_list = lambda value: list(value) if isinstance(value, tuple) else value
    return as_list(a) == as_list(b)


def _without_defaults(module: str, class_name: str, config: dict) -> dict:
    found = _class_defaults(module, class_name)
    if found is None:
        return config
    cls, defaults = found
    kept = dict(config)
    for key, value in config.items():
        if key not in defaults or not _same(value, defaults[key]):
            continue
        trial = {k: v for k, v in kept.items() if k != key}
        try:  # some classes read an argument straight from the config (Rescaling's offset): those stay
            rebuilt = cls.from_config(copy.deepcopy(trial)).get_config()  # from_config may fill in its argument
        except Exception:
            continue
        if _same(rebuilt.get(key), value):
            kept = trial
    return kept


def make_h5_portable(path, config_json: str) -> None:
    """Replace the model config a legacy ``.h5`` file carries (``keras.models.load_model`` reads it)."""
    import h5py

    with h5py.File(path, "r+") as f:
        if "model_config" in f.attrs:
            f.attrs["model_config"] = config_json


def make_keras_portable(path, config_json: str) -> None:
    """Replace ``config.json`` inside a ``.keras`` archive, keeping its other members as they are."""
    rewritten = f"{path}.rewrite"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            data = config_json.encode() if info.filename == "config.json" else source.read(info)
            target.writestr(info, data)
    os.replace(rewritten, path)
