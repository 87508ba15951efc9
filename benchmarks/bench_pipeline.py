"""Accuracy through the photo pipeline beside direct classification, per condition (ferkit.fidelity).

    python benchmarks/bench_pipeline.py --split PrivateTest [--limit N] [--detector yunet] [--model fer]
    python benchmarks/bench_pipeline.py --tune [--split PublicTest] [--limit 1000]

Every face of the split is placed into a 640x480 frame under each condition of
``ferkit.fidelity.CONDITIONS`` and run through detection, cropping and the
model. Columns: faces found; accuracy on the found faces through the pipeline
with the model's crop settings and with the old fixed ones (margin 0.05, no
offset, no alignment), both with 95% bootstrap intervals; direct accuracy of
the dataset's own crops of the same faces; and the gap. ``--tune`` searches the
crop settings (margin, then vertical offset, then alignment) on the conditions
with faces of 96 px and more, maximising mean accuracy; choose on PublicTest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ferkit import data, fidelity  # noqa: E402
from ferkit.faces import DETECTORS  # noqa: E402
from ferkit.model import load_model, predict_probabilities  # noqa: E402


def tune(model, meta, labels, direct, all_detections) -> tuple[float, float, bool]:
    """Coordinate search over margin, offset and alignment; prints every setting tried."""
    in_target = [d for d in all_detections if d.condition.size[0] >= 96]

    def mean_accuracy(margin, offset, align):
        scores = [fidelity.score(labels, direct, fidelity.classify_found(
            model, d, meta.input_size, margin, offset, align))["accuracy"] for d in in_target]
        value = float(np.mean(scores))
        print(f"margin {margin:+.3f}  offset {offset:+.3f}  align {str(align):5}  mean accuracy {100 * value:.2f}",
              flush=True)
        return value

    margin = max((-0.1, -0.075, -0.05, -0.025, 0.0, 0.05), key=lambda m: mean_accuracy(m, 0.0, False))
    offset = max((-0.04, -0.02, 0.0, 0.02, 0.04), key=lambda o: mean_accuracy(margin, o, False))
    align = max((False, True), key=lambda a: mean_accuracy(margin, offset, a))
    return margin, offset, align


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="FER-2013 (default $FERKIT_DATA)")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument("--limit", type=int, default=None, help="first N faces of the split (default all)")
    parser.add_argument("--model", default=None, help="model stem (default the shipped fer)")
    parser.add_argument("--detector", default="yunet", choices=DETECTORS)
    parser.add_argument("--tune", action="store_true", help="search the crop settings instead of reporting")
    args = parser.parse_args()

    dataset = data.load_fer2013(data.dataset_path(args.data), progress=False).split(args.split)
    images, labels = dataset.images[:args.limit], dataset.labels[:args.limit]
    model, meta = load_model(args.model)
    print(f"# {args.split}, {len(images)} faces, detector {args.detector}, model {args.model or 'fer'} "
          f"({meta.architecture})", flush=True)
    direct = predict_probabilities(model, images)
    if args.tune:
        detections = [fidelity.detect(images, condition, args.detector) for condition in fidelity.CONDITIONS]
        margin, offset, align = tune(model, meta, labels, direct, detections)
        print(f"chosen: face_margin {margin}, face_offset {offset}, face_align {str(align).lower()}")
        return
    print(f"direct classification of all {len(images)} crops: {100 * (direct.argmax(1) == labels).mean():.2f}%; "
          f"model crop: margin {meta.face_margin}, offset {meta.face_offset}, align {meta.face_align}; "
          f"old crop: margin {fidelity.OLD_CROP[0]}, offset 0, align off\n")
    print(fidelity.TABLE_HEADER)
    for row in fidelity.table_rows(model, meta, images, labels, args.detector):
        print(row, flush=True)


if __name__ == "__main__":
    main()
