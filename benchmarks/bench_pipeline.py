"""Accuracy through the photo pipeline beside direct classification, per condition (ferkit.fidelity).

    python benchmarks/bench_pipeline.py --split PrivateTest [--limit N] [--detector yunet] [--model fer]
    python benchmarks/bench_pipeline.py --tune [--split PublicTest] [--limit 1000]
    python benchmarks/bench_pipeline.py --tune-lift --limit 600
    python benchmarks/bench_pipeline.py --tune --margins -0.075 -0.05 -0.025 --offsets 0 \
        --percentiles none 5 10 25  # a narrower search (each setting is scored once)

Every face of the split is placed into a 640x480 frame under each condition of
``ferkit.fidelity.CONDITIONS`` and run through detection, cropping and the
model. Columns: faces found; accuracy on the found faces through the pipeline
with the model's crop settings and with the old fixed ones (margin 0.05, no
offset, no alignment), both with 95% bootstrap intervals; direct accuracy of
the dataset's own crops of the same faces; and the gap. ``--tune`` searches the
crop settings (margin, then vertical offset, then alignment, then the
low-contrast lift's percentile) on the conditions
with faces of 96 px and more, maximising mean accuracy; choose on PublicTest.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

from common import DETECTION_CACHE  # first: puts this checkout's ferkit on sys.path
from ferkit import data, faces, fidelity
from ferkit.inference import predict_probabilities
from ferkit.model import load_model


#: The settings ``--tune`` tries, each in turn at the best of those before (``--margins`` etc. narrow them).
MARGINS = (-0.1, -0.075, -0.05, -0.025, 0.0, 0.05)
OFFSETS = (-0.04, -0.02, 0.0, 0.02, 0.04)
PERCENTILES = (None, 1, 5, 10, 25)


def tune(model, meta, labels, direct, all_detections, training_images, lift_only=False, margins=MARGINS,
         offsets=OFFSETS, percentiles=PERCENTILES) -> tuple:
    """Coordinate search over margin, offset, alignment and the low-contrast lift's percentile (of the
    Training faces' contrast; None: no lift); prints every setting tried, each once. ``lift_only``: keep the
    model's margin, offset and alignment and search the lift alone."""
    in_target = [d for d in all_detections if d.condition.size[0] >= 96]

    @functools.cache  # each step starts from the best setting of the step before: score it once
    def mean_accuracy(margin, offset, align, percentile):
        lift = faces.low_contrast_settings(training_images, percentile) if percentile else {}
        scores = [fidelity.score(labels, direct, fidelity.classify_found(
            model, d, meta.input_size, margin, offset, align, lift))["accuracy"] for d in in_target]
        value = float(np.mean(scores))
        print(f"margin {margin:+.3f}  offset {offset:+.3f}  align {str(align):5}  low-contrast percentile "
              f"{percentile}  mean accuracy {100 * value:.2f}  " + " ".join(f"{100 * s:.2f}" for s in scores),
              flush=True)
        return value

    if lift_only:
        margin, offset, align = meta.face_margin, meta.face_offset, meta.face_align
    else:
        margin = max(margins, key=lambda m: mean_accuracy(m, 0.0, False, None))
        offset = max(offsets, key=lambda o: mean_accuracy(margin, o, False, None))
        align = max((False, True), key=lambda a: mean_accuracy(margin, offset, a, None))
    percentile = max(percentiles, key=lambda p: mean_accuracy(margin, offset, align, p))
    return margin, offset, align, percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="FER-2013 (default $FERKIT_DATA)")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument("--limit", type=int, default=None, help="first N faces of the split (default all)")
    parser.add_argument("--model", default=None, help="model stem (default the shipped fer)")
    parser.add_argument("--detector", default="yunet", choices=faces.DETECTORS)
    parser.add_argument("--tune", action="store_true", help="search the crop settings instead of reporting")
    parser.add_argument("--tune-lift", action="store_true",
                        help="search only the low-contrast lift, with the model's margin, offset and alignment")
    parser.add_argument("--margins", type=float, nargs="+", default=MARGINS, help="margins --tune tries")
    parser.add_argument("--offsets", type=float, nargs="+", default=OFFSETS, help="offsets --tune tries")
    parser.add_argument("--percentiles", type=_percentile, nargs="+", default=PERCENTILES,
                        help="low-contrast percentiles --tune tries ('none': no lift)")
    args = parser.parse_args()

    everything = data.load_fer2013(data.dataset_path(args.data), progress=False)
    dataset = everything.split(args.split)
    images, labels = dataset.images[:args.limit], dataset.labels[:args.limit]
    model, meta = load_model(args.model)
    print(f"# {args.split}, {len(images)} faces, detector {args.detector}, model {args.model or 'fer'} "
          f"({meta.architecture})", flush=True)
    direct = predict_probabilities(model, images)
    if args.tune or args.tune_lift:
        detections = [fidelity.detect(images, condition, args.detector, cache=DETECTION_CACHE)
                      for condition in fidelity.CONDITIONS]
        margin, offset, align, percentile = tune(model, meta, labels, direct, detections,
                                                 everything.split("Training").images, args.tune_lift,
                                                 args.margins, args.offsets, args.percentiles)
        print(f"chosen: face_margin {margin}, face_offset {offset}, face_align {str(align).lower()}, "
              f"low-contrast percentile {percentile}")
        return
    print(f"direct classification of all {len(images)} crops: {100 * (direct.argmax(1) == labels).mean():.2f}%; "
          f"model crop: margin {meta.face_margin}, offset {meta.face_offset}, align {meta.face_align}, "
          f"low-contrast lift {meta.face_low_contrast or 'off'}; old crop: margin {fidelity.OLD_CROP[0]}, "
          "offset 0, align off, no lift\n")
    print(fidelity.TABLE_HEADER)
    for row in fidelity.table_rows(model, meta, images, labels, args.detector, cache=DETECTION_CACHE):
        print(row, flush=True)


def _percentile(text: str) -> float | None:
    return None if text.lower() == "none" else int(text) if text.isdigit() else float(text)


if __name__ == "__main__":
    main()
