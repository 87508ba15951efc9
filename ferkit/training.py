"""Training: the settings of a run (:class:`TrainConfig`) and :func:`train`, resumable, on any Keras backend.

A run trains on the Training split, validates on PublicTest every epoch and
saves the best epoch (or the weight average, where it does better). The
parts it is made of live beside it: the input pipeline and augmentation in
:mod:`ferkit.augmentation`, devices and precision in :mod:`ferkit.hardware`,
what a run starts from or draws on (saved weights, a teacher, photos) in
:mod:`ferkit.finetune`, history.csv in :mod:`ferkit.history`, and the Keras
callbacks in :mod:`ferkit.callbacks`. Each setting that the command line
offers is declared once, on its field (:func:`ferkit.options.option`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ferkit.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE, build_model, float32_copy, with_fused_batchnorm
from ferkit.augmentation import Augmentation, make_dataset
from ferkit.data import FerDataset
from ferkit.evaluation import MIN_SUPPORT
from ferkit.finetune import PHOTOS_SHARE, crop_settings, load_initial_weights, photo_mix, teacher_targets
from ferkit.hardware import PRECISION_POLICIES, choose_precision, describe_hardware, get_strategy
from ferkit.history import DEFAULT_CHECKPOINT_DIR, read_history
from ferkit.inference import predict_probabilities
from ferkit.model import ModelMeta, save_model
from ferkit.options import option
from ferkit.photos import HELD_OUT_FRACTION, parse_label_map

# Keras is imported where a network is built or trained: importing ferkit must stay fast.


@dataclass
class TrainConfig:
    """How to train: every field has a default; those with a flag are ``python -m ferkit train`` options."""

    architecture: str = option(DEFAULT_ARCHITECTURE, flag="--architecture", choices=tuple(sorted(ARCHITECTURES)),
                               help="network to build (see ferkit.architectures)")
    epochs: int = option(60, flag="--epochs", help="epochs over the Training split")
    batch_size: int = option(128, flag="--batch-size", help="images per step")
    learning_rate: float = option(0.05, flag="--learning-rate",
                                  help="peak learning rate (SGD, Nesterov momentum, warm-up then cosine decay)")
    warmup_epochs: int = option(2, flag="--warmup-epochs",
                                help="epochs of linear learning-rate warm-up before the cosine decay")
    weight_decay: float = option(5e-4, flag="--weight-decay", help="decoupled weight decay")
    label_smoothing: float = option(0.1, flag="--label-smoothing",
                                    help="share of each one-hot target spread over the other classes")
    class_weight: str | None = option(None, flag="--class-weight", choices=("balanced",),
                                      help="weigh classes by inverse frequency")
    precision: str = option("auto", flag="--precision", choices=("auto", *PRECISION_POLICIES),
                            help="auto: bfloat16 on CPUs/GPUs with fast bf16, float16 on older GPUs, else float32")
    seed: int = option(0, flag="--seed",
                       help="seed for weights, shuffling and augmentation: a run with the same seed sees the same "
                            "augmented images in the same order, so give a further stage a new seed if it should "
                            "see fresh ones")
    threshold_accuracy: float | None = option(
        None, flag="--threshold-accuracy", metavar="A",
        help="ThresholdStop: stop once training accuracy >= A (with --threshold-val-accuracy)")
    threshold_val_accuracy: float | None = option(
        None, flag="--threshold-val-accuracy", metavar="B",
        help="ThresholdStop: ... and PublicTest accuracy >= B (the original notebook: 0.75, 0.71)")
    early_stopping_patience: int | None = option(
        None, flag="--early-stopping", metavar="EPOCHS",
        help="stop when PublicTest accuracy has not improved for EPOCHS epochs")
    average_last: int = option(
        0, flag="--average-last", metavar="N",
        help="stochastic weight averaging: end the cosine decay N epochs early, hold the learning rate at "
             "--average-learning-rate and average those N epochs' weights; the average (BatchNorm statistics "
             "recomputed) is saved if it beats the best epoch on PublicTest")
    average_learning_rate: float | None = option(
        None, flag="--average-learning-rate", metavar="LR",
        help="the constant learning rate while averaging (default: a quarter of the peak)")
    #: Distillation: a saved model whose probabilities on the Training images become the targets, mixed
    #: with the true labels as ``teacher_weight * teacher + (1 - teacher_weight) * one-hot``.
    teacher: str | None = option(
        None, flag="--teacher", metavar="MODEL",
        help="distil: train towards MODEL's probabilities, mixed with the labels by --teacher-weight")
    teacher_weight: float = option(0.7, flag="--teacher-weight", metavar="W",
                                   help="targets: W x teacher probabilities + (1 - W) x one-hot label")
    augmentation: Augmentation = field(default_factory=Augmentation)
    #: Labelled photo sets (``ferkit.photos``) trained on beside FER-2013: their faces are found and cut once,
    #: as the model's pipeline cuts them. ``photos_weight[i]`` is the share of each epoch drawn from set i (its
    #: classes evened out by ``photos_balance``); ``photos_held_out`` of each class's photos, whole
    #: people at a time, is kept back for validation, and the best epoch is chosen on the mean of PublicTest
    #: accuracy and the held-out photos' macro recall.
    photos: list[str] = option(
        factory=list, flag="--photos", action="append", metavar="PHOTOS",
        help="also train on labelled photos (class folders or a labels.csv; repeatable): faces found and cut once "
             "as the pipeline cuts them; FRACTION of each class's people held out (--photos-held-out) and the "
             "best epoch chosen on PublicTest and their macro recall")
    photos_weight: list[float] = option(
        factory=list, flag="--photos-weight", action="append", metavar="W",
        help=f"share of each epoch drawn from the matching --photos set (default: {PHOTOS_SHARE:g} split among "
             "the sets)")
    photos_held_out: float = option(HELD_OUT_FRACTION, flag="--photos-held-out", metavar="FRACTION",
                                    help="share of each class's photos held out, by person, for validation "
                                         "(0: none; the best epoch is then chosen on PublicTest alone)")
    photos_labels: dict = option(factory=dict, flag="--photos-labels", action="append", metavar="THEIRS=OURS,...",
                                 convert=parse_label_map,
                                 help="map the photo sets' label names to the classes, e.g. happiness=happy")
    photos_crops: bool = option(False, flag="--photos-crops", action="store_true",
                                help="the --photos sets hold faces already cut out and framed like FER-2013's "
                                     "(a crop set such as CK+48): each image is one face, used whole")
    #: The held-out macro recall averages the classes with at least this many held-out photos.
    photos_min_support: int = MIN_SUPPORT
    photos_balance: float = option(
        0.5, flag="--photos-balance", metavar="B",
        help="even out the photos' classes: a class of n photos is drawn in proportion to n ** (1 - B); 0 keeps "
             "their mix, 1 draws every class alike")
    epoch_size: int | None = option(None, flag="--epoch-size", metavar="N",
                                    help="with --photos: images drawn per epoch (default: the Training split's size)")
    #: Where ``init_weights`` is an average (``ensemble``): which of its networks, counted from 1.
    init_member: int | None = option(
        None, flag="--member", metavar="N",
        help="with --init-weights/--finetune-from an average such as fer: start from its N-th network, "
             "counted from 1 (default: the first of --architecture)")
    # Last among the options: --finetune-from, its alternative, follows it on the command line.
    init_weights: str | None = option(
        None, flag="--init-weights", metavar="MODEL",
        help="start from this saved model's weights (stem or .h5; same architecture and classes), "
             "e.g. to fine-tune the shipped fer model")

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

    from ferkit.callbacks import EpochTimer, ThresholdStop, WeightAverage  # imports Keras

    config = config or TrainConfig()
    if config.photos_crops and not config.photos:
        raise ValueError("--photos-crops says the --photos sets are face crops, but no --photos set was given")
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
    monitor = "val_selection" if mix and mix.validation else "val_accuracy"
    threshold = None
    callbacks = [
        *([mix.validation] if mix and mix.validation else []),  # first: it adds the photo scores the others read
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
                               **({"photos": mix.description} if mix else {}),
                               **({"best_photos_macro_recall": best["val_photos_macro_recall"]}
                                  if mix and mix.validation else {}),
                               "threshold_stop_epoch": threshold.stopped_epoch if threshold else None,
                               "hardware": describe_hardware(),
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
