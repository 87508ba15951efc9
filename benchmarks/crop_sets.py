"""A set of face crops scored as photos and as crops: what `evaluate --crops` changes.

    python benchmarks/crop_sets.py --data FER2013 [--split PublicTest] [--model fer]

Writes the split's 48x48 faces as a class-folder set in a temporary folder
(CK+48 is laid out so), then runs `evaluate` on it twice: as photos (the
detector searches each crop) and with `--crops` (each image used whole),
beside the model classifying the split's arrays directly. One row each:
faces found and accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2

from common import ROOT  # first: puts this checkout's ferkit on sys.path
from ferkit import data
from ferkit.cli import main
from ferkit.inference import predict_probabilities
from ferkit.model import load_model


def write_crop_set(split: data.FerDataset, folder: Path) -> None:
    for index, (image, label) in enumerate(zip(split.images, split.labels)):
        (folder / split.class_names[label]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / split.class_names[label] / f"{index}.png"), image.reshape(48, 48))


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="FER-2013 (default: $FERKIT_DATA)")
    parser.add_argument("--split", default="PublicTest", choices=["PublicTest", "PrivateTest"])
    parser.add_argument("--model", default="fer")
    args = parser.parse_args()
    split = data.load_fer2013(data.dataset_path(args.data), progress=False).split(args.split)
    model, _ = load_model(args.model)
    direct = (predict_probabilities(model, split.images.reshape(-1, 48, 48)).argmax(1) == split.labels).mean()
    rows = [("the split's arrays, classified directly", 1.0, direct)]
    with tempfile.TemporaryDirectory() as temporary:
        crops = Path(temporary) / "crops"
        write_crop_set(split, crops)
        for name, extra in (("evaluate CROPS (the detector searches each crop)", []),
                            ("evaluate CROPS --crops (each image used whole)", ["--crops"])):
            out = Path(temporary) / "out"
            main(["evaluate", str(crops), "--model", args.model, "--results", str(out), "--resamples", "0",
                  "--no-progress", *extra])
            metrics = json.loads((out / "metrics.json").read_text())
            rows.append((name, metrics["faces_found"], metrics["accuracy"]))
    print(f"\n{args.split}, {len(split)} faces, model {args.model} ({ROOT.name})")
    print(f"{'how':<52} {'faces found':>11} {'accuracy':>9}")
    for name, found, accuracy in rows:
        print(f"{name:<52} {found:>11.1%} {accuracy:>9.1%}")


if __name__ == "__main__":
    main_cli()
