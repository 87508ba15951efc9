"""The input pipeline: training batches, shuffled and augmented per image on the host, on any Keras backend.

Augmentation happens before the model: one combined affine transform per
image (flip, rotation, zoom, shift in a single resampling), plus random
erasing, brightness/contrast jitter and, where asked, the blur and JPEG
compression of faces cut from photos. It keeps the saved model free of
training-only layers and costs a few percent of a CPU training step (see
``benchmarks/bench_training.py``), overlapped with it under TensorFlow. Plain
NumPy batches (a ``keras.utils.PyDataset``) let the same code train under
TensorFlow, JAX or PyTorch, so ``KERAS_BACKEND=jax`` uses a GPU where only JAX
has one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ferkit.inference import to_model_input
from ferkit.options import option

# Keras and OpenCV are imported where batches are made: importing ferkit (and building the command line,
# which reads these defaults) must stay fast.


@dataclass
class Augmentation:
    """Random changes applied per image, per batch, during training only."""

    flip: bool = True
    rotation_degrees: float = option(15.0, flag="--rotation", metavar="DEGREES",
                                     help="random rotation, drawn from [-DEGREES, DEGREES]")
    zoom: float = option(0.15, flag="--zoom", help="random scale, drawn from [1 - ZOOM, 1 + ZOOM]")
    shift: float = option(0.1, flag="--shift", help="random shift per axis, as a fraction of the image size")
    erase_probability: float = option(0.25, flag="--erase-probability",
                                      help="chance that an image gets a random rectangle of noise (random erasing)")
    brightness: float = 20.0  # added grey levels, drawn from [-brightness, brightness]
    contrast: float = 0.2  # contrast factor drawn from [1 - contrast, 1 + contrast]
    #: The softness and compression of faces cropped from photos and webcam frames (a face resampled to 48x48
    #: from a small or blurred one, a JPEG): the share of images given a Gaussian blur with sigma drawn from
    #: ``blur_sigma`` (pixels at 48x48), and the share re-encoded as JPEG at a quality drawn from ``jpeg_quality``.
    blur_probability: float = option(0.0, flag="--blur-probability", metavar="P",
                                     help="chance that an image is blurred (Gaussian, sigma {blur_sigma[0]:g}-"
                                          "{blur_sigma[1]:g} pixels), as faces cropped from soft photos and small "
                                          "faces are")
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg_probability: float = option(0.0, flag="--jpeg-probability", metavar="P",
                                     help="chance that an image is re-encoded as JPEG (quality {jpeg_quality[0]}-"
                                          "{jpeg_quality[1]})")
    jpeg_quality: tuple[int, int] = (20, 70)
    #: The light of photos, which FER-2013's faces rarely show: the share of images lit from one side (grey
    #: levels scaled by 1 - s to 1 + s across the face, in a random direction, s drawn from ``light_strength``),
    #: the share given a gamma drawn log-uniformly from ``gamma_range``, and the share shrunk to a side drawn
    #: from ``low_resolution_side`` pixels and enlarged back (a small face in a photo or a webcam frame).
    light_probability: float = option(0.0, flag="--light-probability", metavar="P",
                                      help="chance that an image is lit from one side (grey levels scaled by "
                                           "{light_strength[0]:g}-{light_strength[1]:g} more on one side than the "
                                           "middle)")
    light_strength: tuple[float, float] = (0.2, 0.6)
    gamma_probability: float = option(0.0, flag="--gamma-probability", metavar="P",
                                      help="chance that an image gets a gamma drawn from {gamma_range[0]:g}-"
                                           "{gamma_range[1]:g}")
    gamma_range: tuple[float, float] = (0.5, 2.0)
    low_resolution_probability: float = option(0.0, flag="--low-resolution-probability", metavar="P",
                                               help="chance that an image is shrunk to {low_resolution_side[0]}-"
                                                    "{low_resolution_side[1]} pixels and enlarged back")
    low_resolution_side: tuple[int, int] = (12, 32)


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

    if a.light_probability > 0 or a.gamma_probability > 0 or a.low_resolution_probability > 0:
        out = _photometric(out, a, rng)

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


def _photometric(images: np.ndarray, a: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Side light, gamma and low resolution (each drawn with its own probability) on (B, S, S, 1) float32."""
    import cv2

    batch, size = images.shape[0], images.shape[1]
    uniform = lambda low, high: rng.uniform(low, high, batch).astype(np.float32)
    lit, gamma_drawn, shrunk = (uniform(0.0, 1.0) < p for p in
                                (a.light_probability, a.gamma_probability, a.low_resolution_probability))
    direction, strength = uniform(0.0, 2 * math.pi), uniform(*a.light_strength)
    gammas = np.exp(uniform(math.log(a.gamma_range[0]), math.log(a.gamma_range[1])))
    sides = rng.integers(a.low_resolution_side[0], a.low_resolution_side[1] + 1, batch)
    grid = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / ((size - 1) / 2)  # -1 .. 1 across the face
    for i in np.flatnonzero(lit | gamma_drawn | shrunk):
        image = images[i, :, :, 0]
        if shrunk[i]:
            small = cv2.resize(image, (int(sides[i]), int(sides[i])), interpolation=cv2.INTER_AREA)
            image = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
        if gamma_drawn[i]:
            image = 255.0 * (np.clip(image, 0.0, 255.0) / 255.0) ** gammas[i]
        if lit[i]:
            across = np.cos(direction[i]) * grid[None, :] + np.sin(direction[i]) * grid[:, None]
            image = image * (1.0 + strength[i] * np.clip(across, -1.0, 1.0))
        images[i, :, :, 0] = image
    return images


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
