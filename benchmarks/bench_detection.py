"""What limits YuNet's recall on FER-2013 faces, and how well its eye landmarks follow a turned face.

    python benchmarks/bench_detection.py [--split PublicTest] [--limit 300]

Faces are placed into frames as ``ferkit.fidelity`` does. Recall table, per
condition with faces of 96 px or more: the share of faces found by one search
at several score thresholds (the live view's search), and by
``detect_faces(upscale_search=True)`` at 0.6 (photos: the frame is also
searched at twice its size); and the other detections (not the placed face)
per 100 frames, both ways. Landmark line: for faces turned by up to 20
degrees, the fitted slope and median error of YuNet's eye angle against the
true turn (both relative to the same face upright).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferkit import data, faces, fidelity  # noqa: E402

THRESHOLDS = (0.6, 0.5, 0.4, 0.3)


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="FER-2013 (default $FERKIT_DATA)")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument("--limit", type=int, default=300)
    args = parser.parse_args()
    images = data.load_fer2013(data.dataset_path(args.data), progress=False).split(args.split).images[:args.limit]
    net = cv2.FaceDetectorYN.create(str(faces.YUNET_MODEL), "", (320, 320), 0.3, 0.3, 5000)

    print(f"# {args.split}, first {len(images)} faces, YuNet; share of faces found\n")
    print("| condition | " + " | ".join(f"one search, score >= {t}" for t in THRESHOLDS)
          + " | with the 2x search, score >= 0.6 | other detections per 100 frames, one search / with 2x |")
    print("|---|" + "---|" * (len(THRESHOLDS) + 2))
    for condition in [c for c in fidelity.CONDITIONS if c.size[0] >= 96]:
        found = np.zeros((len(images), len(THRESHOLDS) + 1), bool)
        others = np.zeros((len(images), 2), int)
        for index, image in enumerate(images):
            frame, truth = fidelity.make_frame(image, condition, np.random.default_rng((0, index)))
            net.setInputSize((frame.shape[1], frame.shape[0]))
            rows = net.detect(frame)[1]
            everything = [] if rows is None else [faces.Face(tuple(int(round(v)) for v in row[:4]), float(row[14]))
                                                  for row in rows]
            for column, threshold in enumerate(THRESHOLDS):
                found[index, column] = fidelity.find_face([f for f in everything if f.score >= threshold],
                                                          truth) is not None
            both = faces.detect_faces(frame, upscale_search=True)
            found[index, -1] = fidelity.find_face(both, truth) is not None
            one = [f for f in everything if f.score >= 0.6]
            others[index] = [len(one) - (fidelity.find_face(one, truth) is not None),
                             len(both) - found[index, -1]]
        print(f"| {condition.name} | " + " | ".join(f"{100 * v:.1f}%" for v in found.mean(0))
              + f" | {100 * others[:, 0].mean():.1f} / {100 * others[:, 1].mean():.1f} |", flush=True)

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


if __name__ == "__main__":
    main()
