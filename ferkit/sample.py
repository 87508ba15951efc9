"""Small generated datasets in the FER-2013 formats, for demos and tests.

Nothing here is real data: :func:`cartoon_faces` draws simple faces whose
mouth and brows depend on the class, so pipelines can be exercised (and a
model can learn something) without downloading FER-2013.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ferkit.data import FerDataset
from ferkit.settings import CLASS_NAMES, IMAGE_SIZE, SPLITS

# cv2 is imported where faces are drawn or encoded: importing ferkit must stay fast.


def cartoon_faces(per_class_and_split: int = 4, seed: int = 0) -> FerDataset:
    """A FerDataset of ``7 * 3 * per_class_and_split`` drawn 48x48 faces.

    Each image varies in position, size, brightness and noise; the expression
    (mouth shape, brows) follows the label. Rows are ordered by split.
    """
    import cv2

    rng = np.random.default_rng(seed)
    images, labels, splits = [], [], []
    for split in range(len(SPLITS)):
        for label, name in enumerate(CLASS_NAMES):
            for _ in range(per_class_and_split):
                images.append(_draw_face(name, rng, cv2))
                labels.append(label)
                splits.append(split)
    return FerDataset(images=np.stack(images), labels=np.array(labels, np.int64),
                      splits=np.array(splits, np.int8), source="cartoon_faces")


def _draw_face(expression: str, rng: np.random.Generator, cv2) -> np.ndarray:
    scale = 8  # draw large and shrink, for anti-aliased strokes
    size = IMAGE_SIZE * scale
    background = int(rng.integers(20, 110))
    canvas = np.full((size, size), background, np.uint8)
    cx, cy = (size // 2 + rng.integers(-3, 4, 2) * scale).tolist()
    radius = int(rng.integers(17, 22)) * scale
    skin = int(rng.integers(150, 230))
    cv2.ellipse(canvas, (cx, cy), (radius * 4 // 5, radius), 0, 0, 360, skin, -1, cv2.LINE_AA)
    ink = max(skin - 130, 0)
    eye_y, eye_dx, stroke = cy - radius // 4, radius * 2 // 5, 2 * scale
    for side in (-1, 1):
        eye = (cx + side * eye_dx, eye_y)
        eye_size = (3 * scale, 4 * scale) if expression in ("surprise", "fear") else (3 * scale, 2 * scale)
        cv2.ellipse(canvas, eye, eye_size, 0, 0, 360, ink, -1, cv2.LINE_AA)
        # Brows: slanted inwards-down for anger/disgust, raised for surprise/fear, inwards-up for sadness.
        inner = {"angry": 2, "disgust": 2, "sad": -3}.get(expression, 0) * scale
        lift = {"surprise": -4, "fear": -3}.get(expression, 0) * scale
        brow_y = eye_y - 6 * scale + lift
        cv2.line(canvas, (eye[0] - side * 4 * scale, brow_y + inner), (eye[0] + side * 4 * scale, brow_y - inner // 2),
                 ink, stroke, cv2.LINE_AA)
    mouth_y, mouth_w = cy + radius // 2, radius * 2 // 5
    if expression == "happy":
        cv2.ellipse(canvas, (cx, mouth_y - 3 * scale), (mouth_w, 5 * scale), 0, 10, 170, ink, stroke, cv2.LINE_AA)
    elif expression in ("sad", "disgust"):
        cv2.ellipse(canvas, (cx, mouth_y + 3 * scale), (mouth_w, 4 * scale), 0, 190, 350, ink, stroke, cv2.LINE_AA)
    elif expression in ("surprise", "fear"):
        opening = (3 * scale, 5 * scale) if expression == "surprise" else (5 * scale, 2 * scale)
        cv2.ellipse(canvas, (cx, mouth_y), opening, 0, 0, 360, ink, -1, cv2.LINE_AA)
    elif expression == "angry":
        cv2.rectangle(canvas, (cx - mouth_w, mouth_y - scale), (cx + mouth_w, mouth_y + 2 * scale), ink, -1, cv2.LINE_AA)
    else:  # neutral
        cv2.line(canvas, (cx - mouth_w, mouth_y), (cx + mouth_w, mouth_y), ink, stroke, cv2.LINE_AA)
    image = cv2.resize(canvas, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_layout(data: FerDataset, destination: str | os.PathLike, image_format: str = ".png") -> Path:
    """Write ``data`` in the Kaggle msambare/fer2013 layout.

    ``destination`` ending in ``.zip`` gives a zip archive, anything else a
    folder: ``train/<class>/Training_<i>.png``, ``test/<class>/PublicTest_<i>.png``
    and ``test/<class>/PrivateTest_<i>.png``. PNG keeps pixels exact; ``.jpg``
    mimics the real download.
    """
    import cv2

    destination = Path(destination)
    entries = []
    for i, (image, label, split) in enumerate(zip(data.images, data.labels, data.splits)):
        split_name = SPLITS[split]
        folder = "train" if split_name == "Training" else "test"
        ok, encoded = cv2.imencode(image_format, image)
        if not ok:
            raise ValueError(f"OpenCV cannot encode {image_format!r}")
        entries.append((f"{folder}/{data.class_names[label]}/{split_name}_{i}{image_format}", encoded.tobytes()))
    if destination.suffix.lower() == ".zip":
        destination.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, payload in entries:
                archive.writestr(name, payload)
    else:
        for name, payload in entries:
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
    return destination
