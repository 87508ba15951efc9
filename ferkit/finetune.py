"""Training that starts from or draws on what exists: a saved model's weights, a teacher's probabilities and
crop settings, labelled photos beside FER-2013, and blends of a network with the one fine-tuned from it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ferkit import files, photos
from ferkit.data import FerDataset
from ferkit.faces import low_contrast_settings
from ferkit.inference import predict_probabilities
from ferkit.model import ModelMeta, is_average, load_model, networks_of, read_meta
from ferkit.settings import FER2013_CROP

# Keras is imported where a network is built: importing ferkit must stay fast.
if TYPE_CHECKING:  # only named in annotations (and ferkit.training imports this module)
    import keras

    from ferkit.training import TrainConfig


def load_initial_weights(model, path: str | Path, member: int | None = None) -> ModelMeta:
    """Copy a saved model's weights (``path``: stem or .json/.h5/.keras) into ``model``; return its metadata.

    For a second, differently regularised training stage or fine-tuning; the
    saved model must have the same architecture and number of classes. From an
    average of models (``python -m ferkit ensemble``, such as the shipped
    ``fer``) it takes network number ``member`` (counted from 1), by default
    the first of ``model``'s architecture.
    """
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


#: The share of each epoch drawn from labelled photos (the rest is FER-2013), split evenly among the photo sets
#: where ``photos_weight`` does not say otherwise.
PHOTOS_SHARE = 0.3


class PhotoMix(NamedTuple):
    """FER-2013's Training images and labelled photos' face crops as one training set with sampling weights."""

    images: np.ndarray  # (N, S, S) uint8
    labels: np.ndarray  # (N,) int
    weights: np.ndarray  # (N,) sampling weight of each image
    validation: object  # the PhotoValidation callback on the held-out people; None if none held out
    description: list  # per photo set: path, weight, photos trained on and held out, faces found


def photo_mix(config: TrainConfig, class_names, crops: dict, train_split: FerDataset, checkpoint_dir: Path) -> PhotoMix:
    """Read ``config.photos``, hold out people for validation, cut every face once (cached in ``checkpoint_dir``)
    with the crop settings the model will carry, and weight each set to its share of an epoch."""
    from ferkit.callbacks import PhotoValidation  # imports Keras

    weights = list(config.photos_weight) or [PHOTOS_SHARE / len(config.photos)] * len(config.photos)
    if len(weights) != len(config.photos) or not all(0 < w for w in weights) or sum(weights) >= 1:
        raise ValueError(f"--photos-weight {weights}: give one share per --photos set, each above 0, together "
                         "below 1 (the rest of each epoch is FER-2013)")
    crop_meta = ModelMeta(class_names=list(class_names), **crops)
    images, labels = [train_split.images], [train_split.labels]
    sample_weights = [np.full(len(train_split), (1 - sum(weights)) / len(train_split))]
    held_images, held_labels, held_found, description = [], [], [], []
    for path, share in zip(config.photos, weights):
        photo_set = photos.read_photo_set(path, list(class_names), config.photos_labels)
        # --photos-held-out 0: train on every photo (a set without people named, or too small to hold out 40
        # photos of a class) and choose the epoch on PublicTest alone.
        rest, held = (photo_set.split_by_identity(config.photos_held_out) if config.photos_held_out
                      else (photo_set, photo_set.subset(np.zeros(len(photo_set), bool))))
        cut = dict(cache_dir=checkpoint_dir / "photo_crops", whole_image=config.photos_crops)
        rest_crops, held_crops = photos.crop_photos(rest, crop_meta, **cut), photos.crop_photos(held, crop_meta, **cut)
        found = rest_crops.found
        # Held-out photos stay in validation whatever happens to them (a photo without a face is a miss there).
        left_out = {"labels not among the classes": sum(photo_set.unknown_labels.values()),
                    "unreadable": len(rest_crops.errors),
                    "no face found": int((~found).sum()) - len(rest_crops.errors)}
        dropped = ", ".join(f"{count} {why}" for why, count in left_out.items() if count)
        if not found.any():
            hint = "; if they are faces already cut out, add --photos-crops" if not config.photos_crops else ""
            raise ValueError(f"{path}: no photo to train on (of {len(photo_set)}, {len(held)} held out"
                             f"{'; left out: ' + dropped if dropped else ''}){hint}")
        print(f"{path}: training on {int(found.sum())} photos, {len(held)} held out"
              + (f"; left out: {dropped}" if dropped else ""), file=sys.stderr)
        if not config.photos_crops and (hint := photos.small_misses_hint(rest, rest_crops, "--photos-crops")):
            print(f"{path}: {hint}", file=sys.stderr)
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
                            "held_out_fraction": config.photos_held_out, "face_crops": config.photos_crops,
                            "left_out": left_out})
    validation = PhotoValidation(np.concatenate(held_images), np.concatenate(held_labels),
                                 np.concatenate(held_found), len(class_names),
                                 config.photos_min_support) if config.photos_held_out else None
    return PhotoMix(np.concatenate(images), np.concatenate(labels), np.concatenate(sample_weights), validation,
                    description)


def crop_settings(teacher: str | None = None, train_split: FerDataset | None = None) -> dict:
    """How faces are cut out for a new model: its teacher's settings when distilling, else the measured
    FER-2013 framing (:data:`ferkit.settings.FER2013_CROP`) and the low-contrast lift measured on the Training
    images (:func:`ferkit.faces.low_contrast_settings`). A model trained on FER-2013's crops expects them."""
    if teacher:
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
        mirrored = images[:, :, ::-1]
        probabilities = (predict_probabilities(teacher, images) + predict_probabilities(teacher, mirrored)) / 2
        with files.atomic_path(cache) as temporary:  # a kill mid-write leaves no half cache
            np.savez(temporary, probabilities=probabilities, teacher=str(config.teacher))
    if probabilities.shape != (len(train_split), len(train_split.class_names)):
        raise ValueError(f"{cache}: teacher outputs of shape {probabilities.shape} do not fit "
                         f"{len(train_split)} Training images; delete it to rerun the teacher")
    one_hot = np.eye(len(train_split.class_names), dtype=np.float32)[train_split.labels]
    return (config.teacher_weight * probabilities + (1 - config.teacher_weight) * one_hot).astype(np.float32)
