"""The one inference path: face crops in, class probabilities out.

Training's validation, ``evaluate``, :class:`ferkit.prediction.Predictor` and
the webcam all classify through :func:`predict_probabilities`, so test-time
augmentation (:func:`tta_views`) means the same everywhere.
"""

from __future__ import annotations

import numpy as np


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 face crops -> (N, H, W, 1) float32 in 0-255, what every ferkit model takes."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected (N, H, W) grayscale images, got shape {images.shape}")
    return images[..., None].astype(np.float32)


#: Test-time augmentation shifts each face by this many pixels (48-pixel faces) in four diagonal directions.
TTA_SHIFT = 2


def tta_views(x: np.ndarray) -> list[np.ndarray]:
    """The ten views test-time augmentation averages: the face, its mirror image, and both shifted by
    ``TTA_SHIFT`` pixels towards each corner (edge pixels repeated). ``x``: (N, S, S, 1) float32."""
    size, pad = x.shape[1], TTA_SHIFT
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    views = [x, x[:, :, ::-1]]
    for dy, dx in ((0, 0), (2 * pad, 2 * pad), (0, 2 * pad), (2 * pad, 0)):
        shifted = padded[:, dy:dy + size, dx:dx + size]
        views += [shifted, shifted[:, :, ::-1]]
    return views


def traced_forward(model):
    """``model``'s inference pass as one traced TensorFlow graph, (n, S, S, 1) float32 -> probabilities.

    About 4x faster than an eager call at batch 1; ``Predictor`` classifies through it.
    """
    import tensorflow as tf  # imported only here: importing ferkit must stay fast

    return tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                       input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])


def predict_probabilities(model, images: np.ndarray, batch_size: int = 256, tta: bool = False,
                          forward=None) -> np.ndarray:
    """(N, S, S) uint8 face crops -> (N, classes) float32 probabilities: the one inference path.

    Training's validation, ``evaluate``, ``Predictor`` and the webcam all
    classify through here, so ``tta`` means the same everywhere: the mean
    over :func:`tta_views`. ``forward`` (default ``model.predict`` in
    batches of ``batch_size``) maps (n, S, S, 1) float32 to probabilities;
    ``Predictor`` passes its compiled graph.
    """
    x = to_model_input(images)
    if forward is None:
        forward = lambda batch: model.predict(batch, batch_size=batch_size, verbose=0)
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)
    views = tta_views(x) if tta else [x]
    if len(x) * len(views) <= batch_size:  # a photo's few faces: every view in one call
        together = np.asarray(forward(np.ascontiguousarray(np.concatenate(views))), np.float32)
        return together.reshape(len(views), len(x), -1).mean(axis=0)
    total = sum(np.asarray(forward(np.ascontiguousarray(view)), np.float32) for view in views)
    return total / len(views)

