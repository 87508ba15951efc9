"""Saved models: their files, their metadata (:class:`ModelMeta`), and averages of several networks.

The networks themselves are built in :mod:`ferkit.architectures`; faces are
classified through :mod:`ferkit.inference`. Only built-in Keras layers are
saved: ``fer.json`` + ``fer.h5`` load in a plain Keras 3 process with no
ferkit import.

A saved model is three files side by side::

    fer.json       architecture (model.to_json())
    fer.h5         weights (legacy HDF5, what load_weights("fer.h5") reads)
    fer.meta.json  class names, input size, face-crop settings, provenance
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ferkit import files, portable
from ferkit.architectures import float32_copy, has_training_only_layers
# Documented as ferkit.model.predict_probabilities (docs/python-api.md): kept importable from here.
from ferkit.inference import predict_probabilities  # noqa: F401
from ferkit.settings import CLASS_NAMES, IMAGE_SIZE

# Keras (and TensorFlow) are imported where a model is loaded or saved: importing ferkit must stay fast.

#: Environment variable naming the model to use when none is given (a stem or .json/.h5 path).
MODEL_ENV = "FERKIT_MODEL"
#: The shipped models (fer, fer_lite) live in the package, so a clone, an editable install and a wheel
#: all find them here, from any working directory.
SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = "fer"


class ModelError(ValueError):
    """A model's files are missing, damaged or unreadable here; the message names the file and what to do."""


@dataclass
class ModelMeta:
    """What travels with a model besides its weights."""

    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    input_size: int = IMAGE_SIZE
    #: Pixels go in as grayscale 0-255; the model rescales them itself.
    input_range: list[float] = field(default_factory=lambda: [0.0, 255.0])
    #: Face crops are squared and grown by this fraction of the box size per side.
    face_margin: float = 0.05
    #: ... and their centre moved down by this fraction of the crop's side.
    face_offset: float = 0.0
    #: Turn each crop so the eyes are level (detectors with eye landmarks).
    face_align: bool = False
    #: Crops flatter than ``below_std`` (pixel standard deviation) are stretched to ``mean`` and ``std``
    #: (:func:`ferkit.faces.lift_low_contrast`); empty: crops go in as cut.
    face_low_contrast: dict = field(default_factory=dict)
    architecture: str = ""
    #: Label mapping from the original FER-2013 classes (select_classes).
    label_map: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    #: Library versions that wrote the files, e.g. {"keras": "3.15.1", "tensorflow": "2.21.0"}.
    saved_with: dict = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> "ModelMeta":
        """Read and check a ``.meta.json``; raises :class:`ModelError` naming the file and the bad field."""
        values = _read_json(path, "model metadata file")
        if not isinstance(values, dict):
            raise ModelError(f"{path}: expected a JSON object of model settings, found {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        meta = cls(**values)
        names = meta.class_names
        if not (isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES and all(map(_is_short_text, names))
                and len(set(names)) == len(names)):
            raise ModelError(f"{path}: class_names must be a list of 2-{MAX_CLASSES} distinct names, each "
                             f"1-{MAX_NAME_LENGTH} printable characters, got {_shorten(names)}")
        if not (isinstance(meta.architecture, str) and (meta.architecture == "" or _is_short_text(
                meta.architecture, 2000))):
            raise ModelError(f"{path}: architecture must be a short printable name, got {_shorten(meta.architecture)}")
        for name in ("label_map", "training", "saved_with"):
            if not isinstance(getattr(meta, name), dict):
                raise ModelError(f"{path}: {name} must be a JSON object, got {_shorten(getattr(meta, name))}")
        if meta.input_range != [0, 255]:
            raise ModelError(f"{path}: input_range must be [0, 255] (ferkit models rescale pixels themselves), "
                             f"got {_shorten(meta.input_range)}")
        if not isinstance(meta.input_size, int) or isinstance(meta.input_size, bool) or not 8 <= meta.input_size <= 512:
            raise ModelError(f"{path}: input_size must be a whole number of pixels (8-512), got {meta.input_size!r}")
        if not isinstance(meta.face_margin, (int, float)) or isinstance(meta.face_margin, bool) \
                or not -0.25 <= meta.face_margin <= 1.0:
            raise ModelError(f"{path}: face_margin must be a fraction of the face box between -0.25 and 1.0 "
                             f"(FER-2013's framing is about 0), got {meta.face_margin!r}")
        if not isinstance(meta.face_offset, (int, float)) or isinstance(meta.face_offset, bool) \
                or not -0.5 <= meta.face_offset <= 0.5:
            raise ModelError(f"{path}: face_offset must be a fraction of the crop's side between -0.5 and 0.5, "
                             f"got {meta.face_offset!r}")
        if not isinstance(meta.face_align, bool):
            raise ModelError(f"{path}: face_align must be true or false, got {meta.face_align!r}")
        lift = meta.face_low_contrast
        if not (isinstance(lift, dict) and (not lift or (
                set(lift) == {"below_std", "mean", "std"}
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 255 for v in lift.values())
                and lift["std"] > 0))):
            raise ModelError(f"{path}: face_low_contrast must be {{}} or {{\"below_std\": S, \"mean\": M, \"std\": D}} "
                             f"with grey levels 0-255 and D > 0, got {lift!r}")
        return meta


#: Limits on what a model's files may hold: generous for any real model, small enough to show on a page.
MAX_CLASSES = 100
MAX_NAME_LENGTH = 40
#: fer.json is 30 KB and fer.meta.json 20 KB; a file far larger is not a ferkit model.
MAX_JSON_BYTES = 20 * 2**20


def _is_short_text(value, limit: int = MAX_NAME_LENGTH) -> bool:
    """A name a page or a plot can show as it is: printable, not blank, at most ``limit`` characters."""
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable() and not value.isspace()


def _shorten(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _read_json(path: Path, what: str):
    """A model file's JSON; ModelError naming the file for anything unreadable, huge or absurdly nested."""
    try:
        return json.loads(files.read_text(path, what, MAX_JSON_BYTES))
    except OSError as error:  # a FIFO, a device, a huge file: the message names it
        raise ModelError(f"{error}; restore the model's files or retrain it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: not readable JSON ({error}); restore it or retrain the model") from None
    except RecursionError:
        raise ModelError(f"{path}: JSON nested too deeply to be a model file; restore it or retrain "
                         "the model") from None


def is_average(meta: "ModelMeta") -> bool:
    """Whether ``meta`` describes an average of networks (:func:`average_models`)."""
    return (meta.architecture or "").startswith(AVERAGE_PREFIX)


#: An average's architecture reads "average(member,member,...)".
AVERAGE_PREFIX = "average("


def save_model(model, path: str | Path, meta: ModelMeta) -> dict[str, Path]:
    """Save ``path``.json/.h5/.keras/.meta.json (``path`` without suffix, e.g. ``"fer"``).

    The model is rebuilt in float32 with built-in layers first, so the files
    never carry a mixed precision policy or a training-only layer into
    inference. Configs are written without default-valued arguments
    (:func:`ferkit.portable.portable_config`), so the files load on older
    Keras too. Each file is written to a temporary name and renamed into place.
    """
    base = _stem(path)
    if model.dtype_policy.name != "float32" or has_training_only_layers(model):
        model = float32_copy(model, meta.architecture or model.name, len(meta.class_names), meta.input_size)
    paths = _model_files(base)
    config_json = portable.portable_json(model)
    meta = replace(meta, saved_with=_library_versions())
    with files.atomic_path(paths["h5"]) as h5, files.atomic_path(paths["keras"]) as archive:
        model.save(h5)  # legacy HDF5: load_weights("fer.h5") reads it
        portable.make_h5_portable(h5, config_json)
        model.save(archive)
        portable.make_keras_portable(archive, config_json)
        files.write_text(paths["json"], config_json)
    files.write_text(paths["meta"], json.dumps(asdict(meta), indent=2) + "\n")
    return paths


def _library_versions() -> dict:
    keras = portable.import_keras()

    versions = {"keras": keras.__version__, "backend": keras.config.backend()}
    if versions["backend"] == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


def _stem(path: str | Path) -> Path:
    base = Path(path)
    return base.with_suffix("") if base.suffix in (".json", ".h5", ".keras") else base


def _model_files(base: Path) -> dict[str, Path]:
    return {"json": base.with_suffix(".json"), "h5": base.with_suffix(".h5"),
            "keras": base.with_suffix(".keras"), "meta": base.with_name(base.name + ".meta.json")}


def resolve_model(model: str | Path | None = None) -> Path:
    """Where a model's files are: ``model`` if given, else ``$FERKIT_MODEL``, else the shipped ``fer``.

    A bare name (``"fer"``, ``"fer_lite"``) that is not in the working
    directory is looked up in the package's ``models`` folder
    (:data:`SHIPPED_MODELS`), where the shipped models live, so the defaults
    work from any folder and from an installed wheel. Returns the stem.
    """
    given = str(model)
    if model is None:
        model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        given = f"${MODEL_ENV}={model}" if model != DEFAULT_MODEL else model
    path = Path(model).expanduser()
    if not path.name or path.is_dir():
        raise ModelError(f"{given}: is a folder, not a model; name a model's files, e.g. {path / DEFAULT_MODEL} "
                         f"for {path / DEFAULT_MODEL}.json + .h5")
    base = _stem(path)
    if not base.with_suffix(".json").exists() and len(base.parts) == 1:
        shipped = SHIPPED_MODELS / base
        if shipped.with_suffix(".json").exists():
            return shipped
    return base


def read_meta(path: str | Path | None = None) -> ModelMeta:
    """A saved model's :class:`ModelMeta` alone, without loading its weights (``path`` as for :func:`load_model`)."""
    meta_path = _model_files(resolve_model(path))["meta"]
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no such model metadata; give the stem of a model saved by ferkit")
    return ModelMeta.read(meta_path)


def load_model(path: str | Path | None = None):
    """Load a saved model and its :class:`ModelMeta` (``path``: the .json, .h5, .keras or their stem).

    ``path`` is resolved with :func:`resolve_model` (None: ``$FERKIT_MODEL``
    or the shipped model). Reads ``model_from_json``'s config with Keras's
    safe mode on, then ``load_weights``, exactly as a plain Keras user would.
    Raises :class:`ModelError` naming the file for anything missing,
    damaged or written for another Keras.
    """
    keras = portable.import_keras()
    portable.check_versions()
    base = resolve_model(path)
    paths = _model_files(base)
    for required in (paths["json"], paths["h5"]):
        if not required.exists():
            raise FileNotFoundError(f"{required}: missing; a ferkit model is {base}.json + {base}.h5 "
                             f"(+ {base}.meta.json). Train one with `python -m ferkit train`, or name one with "
                             f"--model / ${MODEL_ENV}.")
        files.require_regular_file(required, "model file")
    meta = ModelMeta.read(paths["meta"]) if paths["meta"].exists() or paths["meta"].is_symlink() else None
    written_by = f" (written by Keras {meta.saved_with['keras']})" if meta and meta.saved_with.get("keras") else ""
    config = _read_json(paths["json"], "model architecture file")
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelError(f"{paths['json']}: not a Keras model config (expected what model.to_json() writes)")
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:
        raise ModelError(f"{paths['json']}: Keras {keras.__version__} cannot build this model{written_by}: "
                         f"{type(error).__name__}: {error}. ferkit's models load on Keras "
                         f"{'.'.join(map(str, portable.MIN_KERAS))} or newer; re-save it with ferkit "
                         "(`python -m ferkit ensemble` or `train` writes portable files) or upgrade Keras") from None
    if not isinstance(model, keras.Model):
        raise ModelError(f"{paths['json']}: holds a {type(model).__name__}, not a Keras model")
    try:
        model.load_weights(paths["h5"])
    except Exception as error:
        raise ModelError(f"{paths['h5']}: cannot load these weights into {paths['json']}'s model "
                         f"({type(error).__name__}: {str(error)[:200]}); the file is damaged or belongs to another "
                         "model: restore it (a shipped model: `git checkout ferkit/models/` or reinstall ferkit) "
                         "or retrain") from None
    if meta is None:
        meta = ModelMeta(class_names=list(CLASS_NAMES)[: model.output_shape[-1]])
    if len(meta.class_names) != model.output_shape[-1]:
        raise ModelError(f"{paths['meta']}: {len(meta.class_names)} class names for a model with "
                         f"{model.output_shape[-1]} outputs")
    if tuple(model.input_shape[1:]) != (meta.input_size, meta.input_size, 1):
        raise ModelError(f"{paths['meta']}: input_size {meta.input_size} does not match the model's input "
                         f"{tuple(model.input_shape[1:])}; fix input_size or restore the file")
    _check_outputs_are_probabilities(model, meta, paths["h5"])
    if is_average(meta):
        networks_of(model, meta, base)  # an average's record must name its members
    return model, meta


def _check_outputs_are_probabilities(model, meta: ModelMeta, weights: Path) -> None:
    """ModelError unless every weight is finite and the model maps probe faces to probabilities.

    A model with NaN weights would label every face "angry nan%", and one whose
    last layer is not a softmax "happy 382%": both are refused at load.
    """
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        raise ModelError(f"{weights}: holds weights that are NaN or infinite (a diverged training run?); "
                         "restore the file or retrain")
    size = meta.input_size
    ramp = np.linspace(0, 255, size * size, dtype=np.float32).reshape(size, size)
    probe = np.stack([np.full((size, size), 128, np.float32), ramp, ramp.T])[..., None]
    outputs = np.asarray(model(probe, training=False), np.float64)
    if not (np.isfinite(outputs).all() and (outputs >= -1e-6).all() and (outputs <= 1 + 1e-6).all()
            and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)):
        raise ModelError(f"{weights}: the model's outputs are not probabilities (for a grey probe face they sum "
                         f"to {outputs[0].sum():.3g}, range {outputs.min():.3g} to {outputs.max():.3g}); its last "
                         "layer must be a softmax over the classes")


#: What members of an average must share: it decides what goes into the model and what comes out.
_SHARED_META = ("class_names", "input_size", "input_range", "face_margin", "face_offset", "face_align",
               "face_low_contrast", "label_map")


def networks_of(model, meta: ModelMeta, path: str | Path) -> list:
    """The networks a saved model is made of, as ``[(keras_model, record)]``.

    A single network gives itself; an average (``average_models``) gives its
    members, each with the record it was saved with (``model``, ``architecture``,
    ``training``), so that averaging an average with more networks stays flat.
    """
    if is_average(meta):
        members = meta.training.get("members")
        networks = model.layers[1:-1]
        if not (isinstance(members, list) and len(members) == len(networks)
                and all(isinstance(m, dict) and {"model", "architecture", "training"} <= set(m) for m in members)):
            raise ModelError(f"{path}: its metadata calls it an average ({_shorten(meta.architecture)}) but "
                             f"training.members does not describe its {len(networks)} networks (each "
                             "{model, architecture, training}); restore the .meta.json or rebuild it with "
                             "`python -m ferkit ensemble`")
        return list(zip(networks, members))
    return [(model, {"model": str(path), "architecture": meta.architecture, "training": meta.training})]


def average_models(paths: Sequence[str | Path]):
    """One Keras model whose output is the mean of several saved models' probabilities, and its metadata.

    Networks of different architectures err on different faces, so their mean
    is more accurate than either (docs/experiments/shipped-average.md); as one model it
    still loads with ``model_from_json`` + ``load_weights``. The members must
    share class names, input size and face-crop settings. A path that is itself
    an average contributes its members, so ``average_models(["fer", "new"])``
    adds a network to the shipped average with every network weighted equally.
    Returns ``(model, meta)``; ``meta.training["members"]`` keeps each member's
    own provenance.
    """
    keras = portable.import_keras()
    loaded = [(path, *load_model(path)) for path in paths]
    first_path, _, first_meta = loaded[0]
    for path, _, meta in loaded[1:]:
        for name in _SHARED_META:
            if getattr(meta, name) != getattr(first_meta, name):
                raise ValueError(f"{path}: {name} {getattr(meta, name)!r} differs from {first_path}'s "
                                 f"{getattr(first_meta, name)!r}; only models trained on the same classes "
                                 "and inputs can be averaged")
    networks = [(path, *network) for path, model, meta in loaded for network in networks_of(model, meta, path)]
    if len(networks) < 2:
        raise ValueError(f"averaging needs at least two networks, got {len(networks)}")
    for i, (path, network, _) in enumerate(networks):
        for other_path, other, _ in networks[:i]:
            if [w.shape for w in network.weights] == [w.shape for w in other.weights] and all(
                    np.array_equal(a, b) for a, b in zip(network.get_weights(), other.get_weights())):
                raise ValueError(f"{path}: holds the same network as {other_path}; give each network once, "
                                 "or it would count twice in the average")
    inputs = keras.Input((first_meta.input_size, first_meta.input_size, 1), name="face")
    outputs = []
    for index, (_, network, record) in enumerate(networks, start=1):
        # A copy under a unique name: Keras requires unique layer names, and members may share an architecture.
        config = json.loads(network.to_json())
        config["config"]["name"] = f"member{index}_{record['architecture'] or network.name}"
        member = keras.models.model_from_json(json.dumps(config))
        member.set_weights(network.get_weights())
        outputs.append(member(inputs))
    averaged = keras.Model(inputs, keras.layers.Average(name="probabilities")(outputs), name="average")
    members = [record for _, _, record in networks]
    architecture = AVERAGE_PREFIX + ",".join(record["architecture"] or network.name for _, network, record in networks) + ")"
    return averaged, replace(first_meta, architecture=architecture, training={"members": members})
