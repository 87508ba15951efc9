"""Choose an average's networks on PublicTest, directly and through the photo pipeline.

    python benchmarks/choose_members.py fer checkpoints/pipe1/fer checkpoints/pipe4/fer ... [--by pipeline]
    python benchmarks/choose_members.py fer new/fer --split PrivateTest --only 1 2 5   # report a chosen set once

Every model given counts as its networks (an average as its members). Each
network classifies the split's own crops ("direct") and the crops the photo
pipeline cuts from the split's faces placed into frames under the conditions of
``ferkit.fidelity`` with faces of 96 px or more ("pipeline": YuNet, both
searches, the first model's crop settings; accuracy on the faces found, mean
over the conditions). Detections are kept in ``--cache`` for the next run. Then the greedy rule the shipped average was
chosen by: start from nothing, add the network that raises the average's
accuracy (``--by direct`` or ``pipeline``) most, stop when the best gain is
under ``--min-gain`` images' worth or at ``--max`` networks. ``--only`` skips
the search and scores the networks numbered so (1-based, in the listing), as
one average (given several times: several averages). Choose on PublicTest; report PrivateTest once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common import DETECTION_CACHE  # first: puts this checkout's ferkit on sys.path
from ferkit import data, fidelity
from ferkit.inference import predict_probabilities
from ferkit.model import load_model, networks_of

TARGET_CONDITIONS = [c for c in fidelity.CONDITIONS if c.size[0] >= 96]


def pipeline_crops(images: np.ndarray, meta, cache: Path | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per target condition: (indices of the faces found, their crops (n, S, S) uint8, cut with ``meta``'s
    crop settings); detections kept in ``cache`` (``fidelity.detect``)."""
    out = []
    for condition in TARGET_CONDITIONS:
        found, crops = fidelity.crop_found(fidelity.detect(images, condition, cache=cache), meta.input_size,
                                           *fidelity.model_crop(meta))
        out.append((found, crops))
        print(f"# {condition.name}: {len(found)} of {len(images)} found", file=sys.stderr, flush=True)
    return out


def accuracies(direct: np.ndarray, pipeline: list[np.ndarray], labels: np.ndarray,
               crops: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, list[float]]:
    """Direct accuracy, pipeline accuracy (mean over conditions) and per condition, of probabilities."""
    per_condition = [float((p.argmax(1) == labels[found]).mean()) for p, (found, _) in zip(pipeline, crops)]
    return float((direct.argmax(1) == labels).mean()), float(np.mean(per_condition)), per_condition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model stems; an average counts as its networks")
    parser.add_argument("--data", default=None, help="FER-2013 (default $FERKIT_DATA)")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument("--limit", type=int, default=None, help="first N faces of the split (default all)")
    parser.add_argument("--by", default="pipeline", choices=["direct", "pipeline"], help="what the rule raises")
    parser.add_argument("--min-gain", type=float, default=4, metavar="IMAGES",
                        help="stop when the best addition gains fewer images than this (default 4)")
    parser.add_argument("--max", type=int, default=6, help="at most this many networks (default 6)")
    parser.add_argument("--only", type=int, nargs="+", action="append", metavar="N",
                        help="score these networks' average instead of choosing; may be given several times")
    parser.add_argument("--cache", type=Path, default=DETECTION_CACHE,
                        help="folder for the detections (default checkpoints/detections; git ignores it)")
    args = parser.parse_args()

    dataset = data.load_fer2013(data.dataset_path(args.data), progress=False).split(args.split)
    images, labels = dataset.images[:args.limit], dataset.labels[:args.limit]
    networks, first = [], []  # first: the networks of the first model given
    for stem in args.models:
        model, meta = load_model(stem)
        members = networks_of(model, meta, stem)
        for number, (network, record) in enumerate(members, start=1):
            name = f"{stem} #{number}" if len(members) > 1 else stem
            networks.append((f"{name} ({record['architecture']})", network, meta))
            if stem == args.models[0]:
                first.append(len(networks) - 1)
    meta = networks[0][2]
    crops = pipeline_crops(images, meta, args.cache)

    print(f"# {args.split}, {len(images)} faces; pipeline: mean over {len(TARGET_CONDITIONS)} conditions "
          f"(faces of 96 px or more), faces found\n")
    print("| | network | direct | pipeline | " + " | ".join(c.name for c in TARGET_CONDITIONS) + " |")
    print("|---|---|---|---|" + "---|" * len(TARGET_CONDITIONS))
    outputs = []

    def of_average(chosen: list[int]) -> tuple[float, float, list[float]]:
        direct = np.mean([outputs[i][0] for i in chosen], axis=0)
        pipeline = [np.mean([outputs[i][1][c] for i in chosen], axis=0) for c in range(len(crops))]
        return accuracies(direct, pipeline, labels, crops)

    def row(label: str, chosen: list[int], number: str = "") -> str:
        d, p, per = of_average(chosen)
        return (f"| {number} | {label} | {100 * d:.2f}% | {100 * p:.2f}% | "
                + " | ".join(f"{100 * a:.2f}" for a in per) + " |")

    for number, (name, network, _) in enumerate(networks, start=1):
        outputs.append((predict_probabilities(network, images),
                        [predict_probabilities(network, c) for _, c in crops]))
        print(row(name, [number - 1], str(number)), flush=True)

    print(row(f"{args.models[0]} as given (average of networks {' '.join(str(i + 1) for i in first)})", first))
    if args.only:
        for numbers in args.only:
            print(row(f"average of networks {' '.join(map(str, numbers))}", [n - 1 for n in numbers]))
        return
    print(f"\ngreedy by {args.by} accuracy; stop under {args.min_gain:g} images' gain or at {args.max}:")
    chosen, best = [], 0.0
    criterion = 0 if args.by == "direct" else 1
    while len(chosen) < min(args.max, len(networks)):
        trials = {i: of_average(chosen + [i]) for i in range(len(networks)) if i not in chosen}
        pick = max(trials, key=lambda i: trials[i][criterion])
        gain_images = (trials[pick][criterion] - best) * len(images)
        if chosen and gain_images < args.min_gain:
            print(f"  stop: the best addition, network {pick + 1}, gains {gain_images:+.1f} images")
            break
        chosen.append(pick)
        best = trials[pick][criterion]
        print(f"  + network {pick + 1}: direct {100 * trials[pick][0]:.2f}%, pipeline {100 * trials[pick][1]:.2f}%"
              + (f" ({gain_images:+.1f} images)" if len(chosen) > 1 else ""))
    print("\n" + row(f"chosen: average of networks {' '.join(str(i + 1) for i in chosen)}", chosen))


if __name__ == "__main__":
    main()
