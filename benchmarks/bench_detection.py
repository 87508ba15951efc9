"""What limits YuNet's recall on FER-2013 faces, and how well its eye landmarks follow a turned face.

    python benchmarks/bench_detection.py [--split PublicTest] [--limit 300]
    python benchmarks/bench_detection.py --discounts 0 0.1 0.15 0.2 0.25 --no-landmarks  # choosing the discount
    python benchmarks/bench_detection.py --crop-geometry --limit 3589  # the crops' scale and offset

Faces are placed into frames as ``ferkit.fidelity`` does. Recall table, per
condition with faces of 96 px or more: the share of faces found by one search
at several score thresholds (the live view's search), and by
``detect_faces(upscale_search=True)`` (photos: the frame is also searched at
twice its size), without and with the faces both searches see kept from
score 0.4 (``CONFIRMED_SCORE_DISCOUNT``; ``--discounts`` compares others);
then the other detections (not the placed face) per 100 frames for each way
of searching, and a last row of boxes per 100 of scikit-image's photos
without faces (``fidelity.faceless_photos``: 19 photos, 3 sizes, 4 variants). Landmark
line: for faces turned by up to 20 degrees, the fitted slope and median error
of YuNet's eye angle against the true turn (both relative to the same face
upright).

``--crop-geometry`` prints instead how the crops ``Predictor`` cuts from the
detected boxes (the shipped model's margin) sit against the dataset's own
crop of each face, in the terms of training's augmentation: the magnification
(true side / crop side; training draws it from ``1 +- zoom``) and the centre's
offset per axis (in units of the side; training draws it from ``+- shift``).
"""

from __future__ import annotations

import argparse

import numpy as np

from common import DETECTION_CACHE  # first: puts this checkout's ferkit on sys.path
from ferkit import data, faces, fidelity

THRESHOLDS = (0.6, 0.5, 0.4, 0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="FER-2013 (default $FERKIT_DATA)")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--discounts", type=float, nargs="+", default=[0.0, faces.CONFIRMED_SCORE_DISCOUNT],
                        help="CONFIRMED_SCORE_DISCOUNT values to compare, one column each (default: none and "
                             "the shipped one)")
    parser.add_argument("--no-landmarks", action="store_true", help="skip the eye-angle line")
    parser.add_argument("--crop-geometry", action="store_true",
                        help="only the crops' magnification and offset per condition")
    args = parser.parse_args()
    images = data.load_fer2013(data.dataset_path(args.data), progress=False).split(args.split).images[:args.limit]
    if args.crop_geometry:
        crop_geometry(images, args.split)
        return
    ways = {"one search": dict(upscale_search=False)}
    for discount in args.discounts:
        name = f"faces seen twice from {faces.MIN_FACE_SCORE - discount:.2f}" if discount else "each face from 0.6"
        ways[f"both searches, {name}"] = dict(upscale_search=True, confirmed_discount=discount)

    print(f"# {args.split}, first {len(images)} faces, YuNet; share of faces found\n")
    print("| condition | " + " | ".join(f"one search, score >= {t}" for t in THRESHOLDS) + " | "
          + " | ".join(list(ways)[1:]) + " | other detections per 100 frames: " + " / ".join(ways) + " |")
    print("|---|" + "---|" * (len(THRESHOLDS) + len(ways)))
    for condition in [c for c in fidelity.CONDITIONS if c.size[0] >= 96]:
        found = np.zeros((len(images), len(THRESHOLDS) + len(ways) - 1), bool)
        others = np.zeros((len(images), len(ways)), int)
        for index, image in enumerate(images):
            frame, truth = fidelity.make_frame(image, condition, np.random.default_rng((0, index)))
            everything = faces.detect_faces(frame, min_score=faces.YUNET_SCORE_FLOOR)
            for column, threshold in enumerate(THRESHOLDS):
                found[index, column] = fidelity.find_face([f for f in everything if f.score >= threshold],
                                                          truth) is not None
            for column, settings in enumerate(ways.values()):
                detected = faces.detect_faces(frame, **settings)
                hit = fidelity.find_face(detected, truth) is not None
                if column:
                    found[index, len(THRESHOLDS) + column - 1] = hit
                others[index, column] = len(detected) - hit
        print(f"| {condition.name} | " + " | ".join(f"{100 * v:.1f}%" for v in found.mean(0))
              + " | " + " / ".join(f"{100 * v:.1f}" for v in others.mean(0)) + " |", flush=True)
    boxes = np.array([[len(faces.detect_faces(photo, **settings)) for settings in ways.values()]
                      for _, photo in fidelity.faceless_photos()])
    print(f"| scikit-image photos without faces ({len(boxes)}), boxes per 100 | "
          + " | ".join("" for _ in range(len(THRESHOLDS) + len(ways) - 1)) + " | "
          + " / ".join(f"{100 * v:.1f}" for v in boxes.mean(0)) + " |")

    if args.no_landmarks:
        return
    turned = fidelity.Condition("turned", rotation=20.0)
    estimated, true = [], []
    for index, image in enumerate(images):
        frame, truth = fidelity.make_frame(image, turned, np.random.default_rng((0, index)))
        # make_frame draws the size, then the angle: replay the draws to know the turn it applied.
        rng = np.random.default_rng((0, index))
        rng.integers(turned.size[0], turned.size[1] + 1)
        angle = float(rng.uniform(-turned.rotation, turned.rotation))
        upright_frame, upright_truth = fidelity.make_frame(image, fidelity.CONDITIONS[0],
                                                           np.random.default_rng((0, index)))
        face = fidelity.find_face(faces.detect_faces(frame), truth)
        upright = fidelity.find_face(faces.detect_faces(upright_frame), upright_truth)
        if face is not None and upright is not None:
            estimated.append(np.degrees(faces.eye_angle(face) - faces.eye_angle(upright)))
            true.append(-angle)  # getRotationMatrix2D turns counter-clockwise for positive angles
    estimated, true = np.array(estimated), np.array(true)
    slope = np.polyfit(true, estimated, 1)[0]
    print(f"\neye angle vs true turn (up to 20 degrees, {len(true)} faces found both ways): slope {slope:.2f}, "
          f"median error {np.median(np.abs(estimated - true)):.1f} degrees")


def crop_geometry(images: np.ndarray, split: str) -> None:
    """The table of ``--crop-geometry``: percentiles over the faces found in each condition."""
    from ferkit.model import read_meta

    margin = read_meta("fer").face_margin
    print(f"# {split}, first {len(images)} faces, YuNet, both searches; crops with the shipped margin {margin:+g}, "
          "against the dataset's crop of the same face (5th, 50th, 95th percentile)\n")
    print("| condition | faces found | magnification | offset x / side | offset y / side |\n|---|---|---|---|---|")
    for condition in fidelity.CONDITIONS:
        rows = []
        detections = fidelity.detect(images, condition, cache=DETECTION_CACHE)  # as Predictor.predict finds them
        for face, (cx, cy, side) in zip(detections.faces, detections.truths):
            if face is not None:
                rows.append((side / faces.crop_side(face, margin), (face.center[0] - cx) / side,
                             (face.center[1] - cy) / side))
        spread = lambda values: " / ".join(f"{v:.2f}" for v in np.percentile(values, [5, 50, 95]))
        columns = np.array(rows).T if rows else np.full((3, 1), np.nan)
        print(f"| {condition.name} | {len(rows)} | " + " | ".join(spread(c) for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
