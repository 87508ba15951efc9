"""The model table: every shipped model and the average's members, side by side in one run.

    python benchmarks/bench_models.py [--models fer fer_lite] [--data fer2013.zip]

Per model: parameters, size on disk (.h5), PrivateTest accuracy classifying
the dataset's crops (plain Keras load, no test-time augmentation) and through
the photo pipeline (the faces placed at 192 px in a grey 640x480 frame,
detected by YuNet and cropped with the model's settings; accuracy on the found
faces), faces per second at batch 1 and 64 (median of repeated timed calls of
the model's traced graph, as Predictor runs it; the calls of all models are
interleaved so load on the machine hits them alike), and how it was trained.
The average's members are measured as networks of their own (no size on disk).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from common import DETECTION_CACHE, throughput  # first: puts this checkout's ferkit on sys.path
from ferkit import data, fidelity
from ferkit.inference import predict_probabilities, traced_forward
from ferkit.model import load_model, networks_of, resolve_model


def through_blends(training: dict) -> dict:
    """The record of the network a blend (``ferkit interpolate``) was fine-tuned into, through blends of blends."""
    while "interpolation" in training:
        training = training["finetuned_training"]
    return training


def train_seconds(training: dict) -> tuple[float, int]:
    """(seconds, stages) of a model's training record: every stage of a staged model, every member of an average;
    a blend (``ferkit interpolate``) counts as its fine-tuned network, whose stages include the start's."""
    if "members" in training:
        return sum(train_seconds(member["training"])[0] for member in training["members"]), 1
    if "interpolation" in training:
        return train_seconds(through_blends(training))
    seconds = training.get("train_seconds") or 0
    if "init_weights_training" in training:
        before, stages = train_seconds(training["init_weights_training"])
        return seconds + before, stages + 1
    return seconds, 1


def trained(record: dict) -> str:
    """Training time and hardware, as the table shows them."""
    training = record.get("training") or {}
    seconds, stages = train_seconds(training)
    if "members" in training:
        return f"{seconds / 60:.0f} min, its members'"
    blended = "interpolation" in training
    hardware = (through_blends(training).get("hardware") or "").split(" (")[0]
    return (f"{seconds / 60:.0f} min, {hardware}" + (f", {stages} stages" if stages > 1 else "")
            + (", then blended" if blended else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["fer", "fer_lite"])
    parser.add_argument("--data", default=None, help="FER-2013 (default $FERKIT_DATA)")
    args = parser.parse_args()

    test = data.load_fer2013(data.dataset_path(args.data), progress=False).split("PrivateTest")
    found = fidelity.detect(test.images, fidelity.CONDITIONS[0], cache=DETECTION_CACHE)
    rows = []
    for stem in args.models:
        model, meta = load_model(stem)
        members = networks_of(model, meta, stem)
        entries = [(stem, model, meta, {"training": meta.training}, resolve_model(stem).with_suffix(".h5"))]
        if len(members) > 1:
            entries += [(f"{stem} member {i}: {record['architecture']}", network, meta, record, None)
                        for i, (network, record) in enumerate(members, start=1)]
        for name, network, meta, record, h5 in entries:
            direct = predict_probabilities(network, test.images)
            pipeline = fidelity.classify_found(network, found, meta.input_size, *fidelity.model_crop(meta))
            scores = fidelity.score(test.labels, direct, pipeline)
            rows.append({"name": name, "forward": traced_forward(network), "parameters": network.count_params(),
                         "size": f"{os.path.getsize(h5) / 2**20:.1f} MB" if h5 else "-",
                         "direct": (direct.argmax(1) == test.labels).mean(), "pipeline": scores["accuracy"],
                         "trained": trained(record)})
    forwards = {row["name"]: row["forward"] for row in rows}
    single, batched = throughput(forwards, 1), throughput(forwards, 64, calls=5)
    print(f"PrivateTest, {len(test)} faces; pipeline: 192 px face in a 640x480 grey frame, YuNet, "
          f"{100 * np.mean([f is not None for f in found.faces]):.1f}% found\n")
    print("| model | parameters | size (.h5) | PrivateTest, crops | PrivateTest, through the pipeline "
          "| faces/s, batch 1 | faces/s, batch 64 | training |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['parameters'] / 1e6:.2f}M | {row['size']} | {100 * row['direct']:.2f}% "
              f"| {100 * row['pipeline']:.2f}% | {single[row['name']]:.0f} | {batched[row['name']]:.0f} "
              f"| {row['trained']} |")


if __name__ == "__main__":
    main()
