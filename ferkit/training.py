"""Training: the input pipeline, augmentation, callbacks, and resumable runs, on any Keras backend.

Augmentation happens on the host, before the model: one combined affine
transform per image (flip, rotation, zoom, shift in a single resampling), plus
random erasing and brightness/contrast jitter. It keeps the saved model free
of training-only layers and costs a few percent of a CPU training step (see
``benchmarks/bench_training.py``), overlapped with it under TensorFlow. Plain NumPy batches
(a ``keras.utils.PyDataset``) let the same code train under TensorFlow, JAX
or PyTorch, so ``KERAS_BACKEND=jax`` uses a GPU where only JAX has one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ferkit.data import FerDataset
from ferkit.model import (DEFAULT_ARCHITECTURE, ModelMeta, build_model, predict_probabilities, save_model,
                          to_model_input, with_fused_batchnorm)

if TYPE_CHECKING:  # only named in annotations: Keras is imported where a network is built
    import keras

#: Where ``train`` keeps per-epoch checkpoints and history.csv unless told otherwise.
DEFAULT_CHECKPOINT_DIR = "checkpoints/fer"


@dataclass
class Augmentation:
    """Random changes applied per image, per batch, during training only."""

    flip: bool = True
    rotation_degrees: float = 15.0
    zoom: float = 0.15  # scale drawn from [1 - zoom, 1 + zoom]
    shift: float = 0.1  # fraction of the image size, each axis
    erase_probability: float = 0.25  # random erasing (one rectangle of 2-20% of the area)
    brightness: float = 20.0  # added grey levels, drawn from [-brightness, brightness]
    contrast: float = 0.2  # contrast factor drawn from [1 - contrast, 1 + contrast]
    #: The softness and compression of faces cropped from photos and webcam frames (a face resampled to 48x48
    #: from a small or blurred one, a JPEG): the share of images given a Gaussian blur with sigma drawn from
    #: ``blur_sigma`` (pixels at 48x48), and the share re-encoded as JPEG at a quality drawn from ``jpeg_quality``.
    blur_probability: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg_probability: float = 0.0
    jpeg_quality: tuple[int, int] = (20, 70)


@dataclass
class TrainConfig:
    architecture: str = DEFAULT_ARCHITECTURE
    epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 0.05  # peak, after warm-up; SGD with Nesterov momentum, cosine decay
    warmup_epochs: int = 2
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    class_weight: str | None = None  # None or "balanced"
    precision: str = "auto"  # auto | float32 | bfloat16 | float16
    seed: int = 0
    threshold_accuracy: float | None = None  # ThresholdStop: stop once accuracy >= this ...
    threshold_val_accuracy: float | None = None  # ... and val_accuracy >= this
    early_stopping_patience: int | None = None
    #: Start from a saved model's weights (same architecture and classes) instead of random ones.
    init_weights: str | None = None
    #: Where ``init_weights`` is an average (``ensemble``): which of its networks, counted from 1 (default: the
    #: first of this architecture).
    init_member: int | None = None
    #: Weight averaging (SWA) over the last N epochs: the cosine decay ends N epochs early at
    #: ``average_learning_rate``, which then holds while the epochs' weights are averaged.
    average_last: int = 0
    average_learning_rate: float | None = None  # None: a quarter of learning_rate
    #: Distillation: a saved model whose probabilities on the Training images become the targets, mixed
    #: with the true labels as ``teacher_weight * teacher + (1 - teacher_weight) * one-hot``.
    teacher: str | None = None
    teacher_weight: float = 0.7
    augmentation: Augmentation = field(default_factory=Augmentation)
    #: Labelled photo sets (``ferkit.photos``) trained on beside FER-2013: their faces are found and cut once,
    #: as the model's pipeline cuts them. ``photos_weight[i]`` is the share of each epoch drawn from set i (its
    #: classes evened out by ``photos_balance``); ``photos_held_out`` of each class's photos, whole
    #: people at a time, is kept back for validation, and the best epoch is chosen on the mean of PublicTest
    #: accuracy and the held-out photos' macro recall.
    photos: list[str] = field(default_factory=list)
    photos_weight: list[float] = field(default_factory=list)
    photos_held_out: float = 0.25
    photos_labels: dict = field(default_factory=dict)
    #: The held-out macro recall averages the classes with at least this many held-out photos.
    photos_min_support: int = 40
    #: How far each photo set's classes are evened out: a class with n photos is drawn in proportion to
    #: n ** (1 - photos_balance), so 0 keeps the set's own mix, 0.5 (the square root) and 1 draws every class alike.
    photos_balance: float = 0.5
    #: Images drawn per epoch when photos are mixed in (default: as many as the Training split holds).
    epoch_size: int | None = None

    def second_stage(self, init_weights: str | Path, epochs: int | None = None) -> "TrainConfig":
        """A further training stage after this one, as in the CPU recipe of the shipped model's networks.

        It starts from the previous stage's saved model (``init_weights``) with a
        warm restart of the schedule at a lower peak learning rate (0.02, one
        warm-up epoch) and milder geometry (rotation 10 degrees, zoom 0.1):
        under the first stage's strong augmentation the net stops fitting the
        training set well before it overfits, and the milder stage gains what
        that left behind (measured for ``vgg_small``, PublicTest / PrivateTest:
        +2.1 / +1.3 points, then +0.6 / +1.7 for the same stage again, then
        +0.2 / -0.8 for a third time: the gains are used up by then).
        Everything else (architecture, thresholds, seed, ...) carries over.
        """
        return replace(self, epochs=self.epochs if epochs is None else epochs, init_weights=str(init_weights),
                       learning_rate=0.02, warmup_epochs=1,
                       augmentation=replace(self.augmentation, rotation_degrees=10.0, zoom=0.1))


# ----------------------------------------------------------------------------
# Data pipeline


def augment_batch(images: np.ndarray, augmentation: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Randomly transform a batch (B, H, W, 1) float32 in 0-255; returns a new array of the same shape.

    Geometry is one affine resampling per image (OpenCV, bilinear, mirrored
    border): flip, rotation, zoom and shift cost the same as any one of them.
    Plain NumPy and OpenCV on the host, so every Keras backend trains with it.
    """
    import cv2

    a = augmentation
    batch, size = images.shape[0], images.shape[1]
    uniform = lambda low, high: rng.uniform(low, high, batch).astype(np.float32)
    angle = np.deg2rad(uniform(-a.rotation_degrees, a.rotation_degrees))
    scale = uniform(1 - a.zoom, 1 + a.zoom)
    flip = np.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if a.flip else np.ones(batch)
    tx, ty = uniform(-a.shift, a.shift) * size, uniform(-a.shift, a.shift) * size
    # Each output pixel samples input = M (output - centre - shift) + centre, M = rotation^-1 scale^-1 flip.
    cos, sin, centre = np.cos(angle) / scale, np.sin(angle) / scale, (size - 1) / 2
    a0, a1, b0, b1 = flip * cos, sin, -flip * sin, cos
    a2 = centre - a0 * (centre + tx) - a1 * (centre + ty)
    b2 = centre - b0 * (centre + tx) - b1 * (centre + ty)
    inverse_maps = np.stack([np.stack([a0, a1, a2], 1), np.stack([b0, b1, b2], 1)], 1)
    out = np.empty_like(images, dtype=np.float32)
    for i in range(batch):
        out[i, :, :, 0] = cv2.warpAffine(images[i, :, :, 0], inverse_maps[i], (size, size),
                                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                         borderMode=cv2.BORDER_REFLECT)

    if a.blur_probability > 0 or a.jpeg_probability > 0:  # (drawn only then: older recipes keep their batches)
        blurred = uniform(0.0, 1.0) < a.blur_probability
        sigmas = uniform(*a.blur_sigma)
        compressed = uniform(0.0, 1.0) < a.jpeg_probability
        qualities = rng.integers(a.jpeg_quality[0], a.jpeg_quality[1] + 1, batch)
        for i in np.flatnonzero(blurred | compressed):
            image = out[i, :, :, 0]
            if blurred[i]:
                image = cv2.GaussianBlur(image, (0, 0), float(sigmas[i]), borderType=cv2.BORDER_REFLECT)
            if compressed[i]:
                encoded = cv2.imencode(".jpg", np.clip(np.rint(image), 0, 255).astype(np.uint8),
                                       [cv2.IMWRITE_JPEG_QUALITY, int(qualities[i])])[1]
                image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE).astype(np.float32)
            out[i, :, :, 0] = image

    if a.contrast or a.brightness:
        mean = out.mean(axis=(1, 2, 3), keepdims=True)
        factor = uniform(1 - a.contrast, 1 + a.contrast).reshape(-1, 1, 1, 1)
        shift = uniform(-a.brightness, a.brightness).reshape(-1, 1, 1, 1)
        out = (out - mean) * factor + mean + shift

    if a.erase_probability > 0:
        area = uniform(0.02, 0.2) * size * size
        aspect = np.exp(uniform(math.log(0.3), math.log(3.3)))
        h = np.minimum(np.sqrt(area * aspect), size)
        w = np.minimum(np.sqrt(area / aspect), size)
        y0, x0 = uniform(0.0, 1.0) * (size - h), uniform(0.0, 1.0) * (size - w)
        grid = np.arange(size)
        rows = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
        cols = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])
        erase = rows[:, :, None] & cols[:, None, :] & (uniform(0.0, 1.0) < a.erase_probability)[:, None, None]
        fill = rng.uniform(0, 255, out.shape).astype(np.float32)
        out = np.where(erase[..., None], fill, out)
    return np.clip(out, 0.0, 255.0, out=out)


def make_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, *,
                 training: bool, augmentation: Augmentation | None = None, seed: int = 0, first_epoch: int = 0,
                 targets: np.ndarray | None = None, weights: np.ndarray | None = None,
                 epoch_size: int | None = None):
    """Batches of ((B, 48, 48, 1) float32 0-255, (B, num_classes) float32 one-hot), as a ``keras.utils.PyDataset``.

    ``targets`` ((N, num_classes) float32, rows summing to 1) replaces the
    one-hot labels, as distillation's soft targets do.

    With ``training`` the images are reshuffled every epoch (dropping the last
    partial batch) and augmented; batch ``i`` of epoch ``e`` depends only on
    ``(seed, e, i)``, so a run resumed at ``first_epoch`` sees the batches the
    uninterrupted run would have. With ``weights`` ((N,), any scale) each
    epoch instead draws ``epoch_size`` images (default N) with replacement,
    image i with probability proportional to ``weights[i]``: how datasets are
    mixed. Any Keras backend consumes it.
    """
    import keras

    x = to_model_input(images)
    y = np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)] if targets is None \
        else np.asarray(targets, np.float32)

    drawn = len(x) if weights is None or not epoch_size else epoch_size
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = first_epoch
            self._order_epoch, self._order = None, None

        def order(self):
            """This epoch's shuffle (or weighted draw) of the image indices, made once per epoch."""
            if self._order_epoch != self.epoch:
                rng = np.random.default_rng((seed, self.epoch))
                self._order = rng.permutation(len(x)) if p is None else rng.choice(len(x), drawn, p=p)
                self._order_epoch = self.epoch
            return self._order

        def __len__(self):
            if training and drawn >= batch_size:
                return drawn // batch_size
            return math.ceil((drawn if training else len(x)) / batch_size)

        def __getitem__(self, index):
            if not training:
                rows = slice(index * batch_size, (index + 1) * batch_size)
                return x[rows], y[rows]
            rows = np.sort(self.order()[index * batch_size:(index + 1) * batch_size])
            images_out = x[rows]
            if augmentation is not None:
                images_out = augment_batch(images_out, augmentation, np.random.default_rng((seed, self.epoch, index)))
            return images_out, y[rows]

        def on_epoch_end(self):
            self.epoch += 1

    return Batches()


# ----------------------------------------------------------------------------
# Hardware


def accelerators() -> list[tuple[str, float]]:
    """(name, compute capability) of each GPU the Keras backend sees; capability 0 where unknown."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
        return [(d.get("device_name", "GPU"), float("%d.%d" % d.get("compute_capability", (0, 0)))) for d in details]
    if backend == "jax":
        import jax

        return [(d.device_kind, float(getattr(d, "compute_capability", 0) or 0))
                for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [(torch.cuda.get_device_name(i), float("%d.%d" % torch.cuda.get_device_capability(i)))
                for i in range(torch.cuda.device_count())]
    return []


def choose_precision(requested: str = "auto") -> str:
    """The Keras dtype policy to train with: bf16 where the hardware has fast bf16."""
    if requested != "auto":
        return {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[requested]
    gpus = accelerators()
    if gpus:
        return "mixed_bfloat16" if gpus[0][1] >= 8 else "mixed_float16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


class _NoStrategy:
    """Stands in for a ``tf.distribute`` strategy outside TensorFlow: a ``scope()`` that does nothing."""

    def __init__(self, num_replicas_in_sync: int = 1):
        self.num_replicas_in_sync = num_replicas_in_sync

    def scope(self):
        return contextlib.nullcontext()


def get_strategy():
    """Where to build the model: an object whose ``scope()`` the model and optimizer are created in.

    TensorFlow: a ``tf.distribute`` strategy, TPUStrategy on a TPU,
    MirroredStrategy over several GPUs (or logical CPUs), else the default.
    JAX with several devices: Keras's ``DataParallel`` distribution is set,
    which splits each batch across them, and the scope does nothing. Either
    way ``num_replicas_in_sync`` says over how many devices a batch is split.
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = len(jax.devices())
        if devices > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel())
        return _NoStrategy(devices)
    if keras.backend.backend() != "tensorflow":
        return _NoStrategy()
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, ImportError, tf.errors.NotFoundError):
        pass
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([c.name for c in cpus])
    return tf.distribute.get_strategy()


# ----------------------------------------------------------------------------
# Training


@dataclass
class TrainResult:
    model: object
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    threshold_epoch: int | None
    wall_seconds: float
    files: dict = field(default_factory=dict)
    #: With ``average_last``: the averaged epochs (1-based), both candidates' PublicTest accuracy, which was saved.
    averaged: dict | None = None


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (k * count)`` per class: rarer classes weigh more."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    return {i: float(len(labels) / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def read_history(path: Path) -> list[dict]:
    """The per-epoch rows of a training run's history.csv ([] if there is none)."""
    from ferkit import files

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


def train(data: FerDataset, config: TrainConfig | None = None, *, out: str | Path = "fer",
          checkpoint_dir: str | Path = DEFAULT_CHECKPOINT_DIR, verbose: int | str = "auto",
          extra_callbacks: list | None = None, provenance: dict | None = None) -> TrainResult:
    """Train on ``data``'s Training split, validate on PublicTest, save the best epoch.

    Interrupt it at any time: run it again with the same ``checkpoint_dir``
    and it resumes after the last finished epoch (weights, optimizer, learning
    rate schedule and history). The epoch with the best PublicTest accuracy is
    saved as ``out``.json/.h5/.keras/.meta.json; PrivateTest is never looked at.
    ``provenance`` (e.g. the command line) is recorded in the metadata.
    """
    import keras

    from ferkit.callbacks import EpochTimer, ThresholdStop, WeightAverage

    config = config or TrainConfig()
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    train_split, val_split = data.split("Training"), data.split("PublicTest")
    if len(train_split) == 0 or len(val_split) == 0:
        raise ValueError(f"{data.source}: training needs Training and PublicTest rows, "
                         f"found {len(train_split)} and {len(val_split)}")
    num_classes = len(data.class_names)
    keras.utils.set_random_seed(config.seed)
    policy = choose_precision(config.precision)
    keras.mixed_precision.set_global_policy(policy)

    strategy = get_strategy()
    batch_size = config.batch_size
    steps_per_epoch = len(train_split) // batch_size or 1
    with strategy.scope():
        model = build_model(config.architecture, num_classes)
        if keras.backend.backend() == "tensorflow":
            model = with_fused_batchnorm(model)  # same model, faster BatchNorm; saved with the built-in layer
        initial_meta = load_initial_weights(model, config.init_weights, config.init_member) \
            if config.init_weights else None
        optimizer = keras.optimizers.SGD(learning_rate_schedule(config, steps_per_epoch), momentum=0.9,
                                         nesterov=True, weight_decay=config.weight_decay)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                      metrics=["accuracy"])

    log_path = checkpoint_dir / "history.csv"
    previous = read_history(log_path)
    targets = teacher_targets(config, train_split, checkpoint_dir) if config.teacher else None
    crops = crop_settings(config.teacher, train_split)
    mix = photo_mix(config, data.class_names, crops, train_split, checkpoint_dir) if config.photos else None
    if mix is not None and targets is not None:  # distilling: the teacher for FER-2013's faces, the labels for photos
        targets = np.concatenate([targets, np.eye(num_classes, dtype=np.float32)[mix.labels[len(train_split):]]])
    train_ds = make_dataset(mix.images if mix else train_split.images, mix.labels if mix else train_split.labels,
                            num_classes, batch_size, training=True, augmentation=config.augmentation,
                            seed=config.seed, first_epoch=len(previous), targets=targets,
                            weights=mix.weights if mix else None, epoch_size=config.epoch_size)
    val_ds = make_dataset(val_split.images, val_split.labels, num_classes, 256, training=False)
    best_path = checkpoint_dir / "best.weights.h5"
    monitor = "val_selection" if mix else "val_accuracy"
    threshold = None
    callbacks = [
        *([mix.validation] if mix else []),  # first: it adds the photo scores the others read
        # Saves weights, optimizer and epoch after every epoch; restores them on the next run.
        keras.callbacks.BackupAndRestore(str(checkpoint_dir / "backup"), save_freq="epoch", delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            str(best_path), monitor=monitor, mode="max", save_best_only=True, save_weights_only=True,
            # After a resume, only an epoch better than every earlier one may replace the best file.
            initial_value_threshold=max((r[monitor] for r in previous), default=None)),
        EpochTimer(),  # before the logger, which then records epoch_seconds
        keras.callbacks.CSVLogger(str(log_path), append=True),
    ]
    if config.threshold_accuracy is not None or config.threshold_val_accuracy is not None:
        threshold = ThresholdStop(config.threshold_accuracy or 0.0, config.threshold_val_accuracy or 0.0)
        callbacks.append(threshold)
    if config.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                       patience=config.early_stopping_patience))
    averager = None
    if config.average_last > 0:
        averager = WeightAverage(max(0, config.epochs - config.average_last), checkpoint_dir / "average.npz")
        callbacks.append(averager)
    callbacks += extra_callbacks or []
    (checkpoint_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))

    started = time.perf_counter()
    weights = class_weights(train_split.labels, num_classes) if config.class_weight == "balanced" else None
    # shuffle=False: the batches shuffle themselves, seeded per epoch; Keras's own reordering of them
    # draws on Python's global random state, which a resumed run does not get back.
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
              class_weight=weights, verbose=verbose, shuffle=False)
    wall = time.perf_counter() - started

    history = read_history(log_path)
    if best_path.exists():
        model.load_weights(str(best_path))
    best = max(history, key=lambda r: r[monitor]) if history else {"epoch": -1, "val_accuracy": float("nan")}
    averaged = None
    if averager is not None and averager.epochs:
        model, averaged = _choose_average(model, averager, config.architecture, num_classes, train_ds, val_split)
    meta = ModelMeta(class_names=list(data.class_names), architecture=config.architecture,
                     label_map=dict(data.label_map), **crops,
                     training={"config": asdict(config), "dataset": data.source, "precision": policy,
                               "best_epoch": int(best["epoch"]) + 1, "epochs_run": len(history),
                               "best_public_test_accuracy": best["val_accuracy"],
                               **({"best_photos_macro_recall": best["val_photos_macro_recall"],
                                   "photos": mix.description} if mix else {}),
                               "threshold_stop_epoch": threshold.stopped_epoch if threshold else None,
                               "hardware": _hardware(),
                               "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in history), 1),
                               **({"average": averaged} if averaged else {}),
                               **(provenance or {}),
                               # How the starting model was trained: a staged model records every stage.
                               **({"init_weights_training": initial_meta.training} if initial_meta else {})})
    files = save_model(model, out, meta)
    return TrainResult(model=model, history=history, best_epoch=int(best["epoch"]) + 1,
                       best_val_accuracy=best["val_accuracy"],
                       threshold_epoch=threshold.stopped_epoch if threshold else None,
                       wall_seconds=wall, files=files, averaged=averaged)


class PhotoMix(NamedTuple):
    """FER-2013's Training images and labelled photos' face crops as one training set with sampling weights."""

    images: np.ndarray  # (N, S, S) uint8
    labels: np.ndarray  # (N,) int
    weights: np.ndarray  # (N,) sampling weight of each image
    validation: object  # the PhotoValidation callback on the held-out people
    description: list  # per photo set: path, weight, photos trained on and held out, faces found


def photo_mix(config: TrainConfig, class_names, crops: dict, train_split: FerDataset, checkpoint_dir: Path) -> PhotoMix:
    """Read ``config.photos``, hold out people for validation, cut every face once (cached in ``checkpoint_dir``)
    with the crop settings the model will carry, and weight each set to its share of an epoch."""
    from ferkit import photos as photo_module
    from ferkit.callbacks import PhotoValidation

    weights = list(config.photos_weight) or [0.3 / len(config.photos)] * len(config.photos)
    if len(weights) != len(config.photos) or not all(0 < w for w in weights) or sum(weights) >= 1:
        raise ValueError(f"--photos-weight {weights}: give one share per --photos set, each above 0, together "
                         "below 1 (the rest of each epoch is FER-2013)")
    crop_meta = ModelMeta(class_names=list(class_names), **crops)
    images, labels = [train_split.images], [train_split.labels]
    sample_weights = [np.full(len(train_split), (1 - sum(weights)) / len(train_split))]
    held_images, held_labels, held_found, description = [], [], [], []
    for path, share in zip(config.photos, weights):
        photo_set = photo_module.read_photo_set(path, list(class_names), config.photos_labels)
        rest, held = photo_set.split_by_identity(config.photos_held_out)
        rest_crops = photo_module.crop_photos(rest, crop_meta, cache_dir=checkpoint_dir / "photo_crops")
        held_crops = photo_module.crop_photos(held, crop_meta, cache_dir=checkpoint_dir / "photo_crops")
        found = rest_crops.found
        counts = np.bincount(rest.labels[found], minlength=len(class_names))
        # A class of n photos drawn in proportion to n ** (1 - balance): rare classes more often than their share.
        per_photo = (np.maximum(counts, 1) ** -config.photos_balance)[rest.labels[found]]
        images.append(rest_crops.crops[found])
        labels.append(rest.labels[found])
        sample_weights.append(share * per_photo / per_photo.sum())
        held_images.append(held_crops.crops)
        held_labels.append(held.labels)
        held_found.append(held_crops.found)
        description.append({"path": str(path), "weight": share, "trained_on": int(found.sum()),
                            "held_out": len(held), "faces_found": float(np.mean(np.r_[found, held_crops.found])),
                            "held_out_fraction": config.photos_held_out})
    validation = PhotoValidation(np.concatenate(held_images), np.concatenate(held_labels),
                                 np.concatenate(held_found), len(class_names), config.photos_min_support)
    return PhotoMix(np.concatenate(images), np.concatenate(labels), np.concatenate(sample_weights), validation,
                    description)


def crop_settings(teacher: str | None = None, train_split: FerDataset | None = None) -> dict:
    """How faces are cut out for a new model: its teacher's settings when distilling, else the measured
    FER-2013 framing (:data:`ferkit.faces.FER2013_CROP`) and the low-contrast lift measured on the Training
    images (:func:`ferkit.faces.low_contrast_settings`). A model trained on FER-2013's crops expects them."""
    from ferkit.faces import FER2013_CROP, low_contrast_settings

    if teacher:
        from ferkit.model import read_meta

        meta = read_meta(teacher)
        return {name: getattr(meta, name) for name in (*FER2013_CROP, "face_low_contrast")}
    lift = low_contrast_settings(train_split.images) if train_split is not None and len(train_split) else {}
    return {**FER2013_CROP, "face_low_contrast": lift}


def teacher_targets(config: TrainConfig, train_split: FerDataset, checkpoint_dir: Path) -> np.ndarray:
    """Distillation targets (N, classes) float32 for the Training images: the teacher's probabilities
    (mean over each image and its mirror image) mixed with the one-hot labels by ``config.teacher_weight``.

    The teacher runs once, on the unaugmented images, and its outputs are kept in
    ``checkpoint_dir/teacher.npz`` (with the teacher's name) for a resumed run: running the teacher on every
    augmented batch would cost more than training the student. Each augmented view of an image is trained
    towards that image's targets.
    """
    from ferkit import files
    from ferkit.model import load_model

    cache = checkpoint_dir / "teacher.npz"
    if cache.exists():
        with np.load(files.require_regular_file(cache, "teacher cache")) as stored:
            probabilities, cached_teacher = stored["probabilities"], str(stored["teacher"])
        if cached_teacher != str(config.teacher):
            raise ValueError(f"{cache}: holds the outputs of teacher {cached_teacher}, not {config.teacher}; "
                             "give this run its own --checkpoint-dir, or delete the file")
    else:
        teacher, meta = load_model(config.teacher)
        if list(meta.class_names) != list(train_split.class_names):
            raise ValueError(f"{config.teacher}: its classes {meta.class_names} differ from the data's "
                             f"{list(train_split.class_names)}; distil from a model trained on the same classes")
        images = train_split.images
        probabilities = (predict_probabilities(teacher, images) + predict_probabilities(teacher, images[:, :, ::-1])) / 2
        with files.atomic_path(cache) as temporary:  # a kill mid-write leaves no half cache
            np.savez(temporary, probabilities=probabilities, teacher=str(config.teacher))
    if probabilities.shape != (len(train_split), len(train_split.class_names)):
        raise ValueError(f"{cache}: teacher outputs of shape {probabilities.shape} do not fit "
                         f"{len(train_split)} Training images; delete it to rerun the teacher")
    one_hot = np.eye(len(train_split.class_names), dtype=np.float32)[train_split.labels]
    return (config.teacher_weight * probabilities + (1 - config.teacher_weight) * one_hot).astype(np.float32)


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """Linear warm-up to ``learning_rate``, cosine decay, and a constant tail for weight averaging.

    Without averaging the decay runs to zero at the last step. With
    ``average_last`` N it reaches ``average_learning_rate`` N epochs before the
    end and stays there; averaging every epoch means a constant rate throughout.
    """
    import keras

    averaging = min(config.average_last, config.epochs)
    floor = (config.average_learning_rate or config.learning_rate / 4) if averaging else 0.0
    if averaging == config.epochs:
        return floor
    warmup = config.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10 if warmup else config.learning_rate,
        decay_steps=max(1, (config.epochs - averaging) * steps_per_epoch - warmup),
        alpha=floor / config.learning_rate,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def recompute_batchnorm(model, dataset) -> None:
    """Set every BatchNorm layer's moving mean and variance to their exact means over ``dataset``.

    Averaged weights need statistics of their own: the averaged statistics
    belong to none of the networks that were averaged. One pass in training
    mode with the momentum set so that each batch weighs 1/n, as in SWA.
    """
    import keras

    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return
    saved_momentum = [layer.momentum for layer in layers]
    try:
        for seen in range(len(dataset)):
            images, _ = dataset[seen]
            for layer in layers:
                layer.momentum = seen / (seen + 1)  # 0 on the first batch: earlier statistics are dropped
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, saved_momentum):
            layer.momentum = momentum


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _choose_average(model, averager, architecture: str, num_classes: int, train_ds, val_split):
    """The averaged weights (BatchNorm recomputed) if they beat the best epoch on PublicTest, else that epoch.

    Both candidates are scored the same way, in float32 as ``evaluate`` scores
    a saved model; a tie goes to the average.
    """
    from ferkit.model import float32_copy

    best_epoch = float32_copy(model, architecture, num_classes)
    average = float32_copy(model, architecture, num_classes)
    average.set_weights(averager.average)
    recompute_batchnorm(average, train_ds)
    accuracy = {name: float((predict_probabilities(candidate, val_split.images).argmax(1) == val_split.labels).mean())
                for name, candidate in (("best_epoch", best_epoch), ("average", average))}
    saved = accuracy["average"] >= accuracy["best_epoch"]
    summary = {"epochs": [averager.epochs[0] + 1, averager.epochs[-1] + 1], "count": len(averager.epochs),
               "public_test_accuracy": accuracy["average"],
               "best_epoch_public_test_accuracy": accuracy["best_epoch"], "saved": saved}
    return (average if saved else best_epoch), summary


def load_initial_weights(model, path: str | Path, member: int | None = None) -> ModelMeta:
    """Copy a saved model's weights (``path``: stem or .json/.h5/.keras) into ``model``; return its metadata.

    For a second, differently regularised training stage or fine-tuning; the
    saved model must have the same architecture and number of classes. From an
    average of models (``python -m ferkit ensemble``, such as the shipped
    ``fer``) it takes network number ``member`` (counted from 1), by default
    the first of ``model``'s architecture.
    """
    from ferkit.model import is_average, load_model, networks_of

    source, meta = load_model(path)
    ours = [tuple(w.shape) for w in model.weights]
    members = networks_of(source, meta, path)
    if member is not None and not 1 <= member <= len(members):
        raise ValueError(f"{path}: member {member} does not exist; it holds {len(members)} network"
                         f"{'s' if len(members) != 1 else ''} (members 1-{len(members)})")
    if is_average(meta):
        fitting = [(network, record) for index, (network, record) in enumerate(members, start=1)
                   if [tuple(w.shape) for w in network.weights] == ours and member in (None, index)]
        if not fitting:
            if member is not None:
                raise ValueError(f"{path}: member {member} is a {members[member - 1][1]['architecture']}; "
                                 f"train with --architecture {members[member - 1][1]['architecture']} "
                                 f"to start from it")
            raise ValueError(f"{path}: none of its members ({', '.join(r['architecture'] for _, r in members)}, "
                             f"with {len(meta.class_names)} classes) fits a {model.name} with "
                             f"{model.output_shape[-1]} classes; train with --architecture one of theirs")
        source, record = fitting[0]
        meta = replace(meta, architecture=record["architecture"], training=record["training"])
    theirs = [tuple(w.shape) for w in source.weights]
    if ours != theirs:
        raise ValueError(f"{path}: its weights do not fit a {model.name} with {model.output_shape[-1]} classes "
                         f"(it is a {meta.architecture or source.name} with {len(meta.class_names)} classes); "
                         f"train with --architecture {meta.architecture or source.name} and its classes")
    model.set_weights(source.get_weights())
    return meta


class Interpolation(NamedTuple):
    """What :func:`interpolate_weights` returns: the blend and the two networks it lies between."""

    model: keras.Model  # the blend, in ``finetuned``'s architecture
    meta: ModelMeta  # ``finetuned``'s settings; ``training`` records both ends and ``alpha``
    start: keras.Model  # the start network, as blended (the chosen member of an average)
    finetuned: keras.Model


def interpolate_weights(finetuned: str | Path, start: str | Path, alpha: float,
                        member: int | None = None) -> Interpolation:
    """The network whose weights are (1 - alpha) x ``start``'s + alpha x ``finetuned``'s.

    Fine-tuning a network for other inputs (such as the pipeline stage of
    docs/experiments/pipeline-fidelity.md) trades some of what it did well for
    what it learns; a network between the two often keeps both (WiSE-FT:
    Wortsman et al., "Robust fine-tuning of zero-shot models", 2022). It is
    meant for a network and one fine-tuned from it, which lie in one basin of
    the loss; independently trained networks do not, and their blend is
    usually far worse than either. ``start`` may be an average: ``member`` picks its
    network (counted from 1), as ``--member`` does for training. Every
    floating-point weight is blended, batch-normalisation statistics included.

    The meta's ``training`` holds ``interpolation`` (both paths, ``member``,
    ``alpha``), ``finetuned_training`` and ``start_training``; the last is
    left out where it is already ``finetuned_training["init_weights_training"]``
    (the usual case: a stage blended with the network it was trained from),
    so that a chain of blends does not store each record twice.
    """
    import keras

    from ferkit.model import is_average, load_model

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha}: must be between 0 (the start network) and 1 (the fine-tuned one)")
    tuned, meta = load_model(finetuned)
    if is_average(meta):
        raise ValueError(f"{finetuned}: an average of {len(meta.training['members'])} networks; blend one "
                         "fine-tuned network at a time, then average the blends with `python -m ferkit ensemble`")
    start_network = keras.models.model_from_json(tuned.to_json())
    try:
        start_meta = load_initial_weights(start_network, start, member)
    except ValueError as error:
        raise ValueError(f"{start} cannot be blended with {finetuned} (a {meta.architecture or tuned.name}); "
                         f"give the network it was fine-tuned from: {error}") from None
    blend = keras.models.model_from_json(tuned.to_json())
    blend.set_weights([(1 - alpha) * ours + alpha * theirs if np.issubdtype(theirs.dtype, np.floating) else theirs
                       for ours, theirs in zip(start_network.get_weights(), tuned.get_weights())])
    training = {"interpolation": {"start": str(start), "member": member, "finetuned": str(finetuned),
                                  "alpha": alpha}}
    if start_meta.training != meta.training.get("init_weights_training"):
        training["start_training"] = start_meta.training
    training["finetuned_training"] = meta.training
    return Interpolation(blend, replace(meta, training=training), start_network, tuned)


def _hardware() -> str:
    import keras

    gpus = [name for name, _ in accelerators()]
    where = ", ".join(gpus) if gpus else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    return f"{where} (Keras backend {keras.backend.backend()})"


