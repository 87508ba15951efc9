"""Dataset loading and conversion speed: ferkit beside the naive approach, same run.

    python benchmarks/bench_data.py ../shared/fer2013/fer2013.zip [--repeats 5]

Each cell is the median of ``--repeats`` runs (wall clock). "naive" is what a
notebook usually does: ZipFile.read / cv2.imread per file, ``" ".join(map(str,
row))`` per CSV row, and ``np.array(row.split(), dtype=np.uint8)`` per row.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

from ferkit import data
from ferkit.settings import CLASS_NAMES, SPLITS
from common import median_seconds


def naive_zip_to_arrays(path):
    images, labels = [], []
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".jpg"):
                raw = np.frombuffer(archive.read(name), np.uint8)
                images.append(cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE))
                labels.append(CLASS_NAMES.index(name.split("/")[-2]))
    return np.stack(images), np.array(labels)


def naive_folder_to_arrays(root):
    images, labels = [], []
    for path in sorted(Path(root).glob("*/*/*.jpg")):
        images.append(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
        labels.append(CLASS_NAMES.index(path.parent.name))
    return np.stack(images), np.array(labels)


def naive_write_csv(dataset, path):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["emotion", "pixels", "Usage"])
        for image, label, split in zip(dataset.images, dataset.labels, dataset.splits):
            writer.writerow([int(label), " ".join(map(str, image.ravel())), SPLITS[split]])


def naive_read_csv(path):
    images, labels = [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            images.append(np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48))
            labels.append(int(row["emotion"]))
    return np.stack(images), np.array(labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zip", nargs="?", default=os.environ.get(data.DATA_ENV), help="the Kaggle fer2013.zip")
    parser.add_argument("--repeats", type=int, default=5, help="runs per cell (median reported)")
    parser.add_argument("--naive-repeats", type=int, default=3, help="runs per naive cell")
    args = parser.parse_args()
    if not args.zip:
        parser.error(f"give the path of fer2013.zip or set {data.DATA_ENV}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(args.zip) as archive:
            archive.extractall(tmp / "folder")
        dataset = data.load_fer2013(args.zip, progress=False)
        ours_csv, naive_csv = tmp / "ours.csv", tmp / "naive.csv"
        data.write_csv(dataset, ours_csv, progress=False)
        naive_write_csv(dataset, naive_csv)
        assert data.load_fer2013(naive_csv).images.tobytes() == dataset.images.tobytes()
        npz = data.write_npz(dataset, tmp / "fer.npz")

        r, nr = args.repeats, args.naive_repeats
        rows = [
            ("zip -> arrays", median_seconds(lambda: data.load_fer2013(args.zip, progress=False), r),
             median_seconds(lambda: naive_zip_to_arrays(args.zip), nr)),
            ("folder -> arrays", median_seconds(lambda: data.load_fer2013(tmp / "folder", progress=False), r),
             median_seconds(lambda: naive_folder_to_arrays(tmp / "folder"), nr)),
            ("zip -> CSV (convert)",
             median_seconds(lambda: data.write_csv(data.load_fer2013(args.zip, progress=False), ours_csv, progress=False), r),
             median_seconds(lambda: naive_write_csv(naive_zip_to_arrays_as_dataset(args.zip), naive_csv), nr)),
            ("CSV -> arrays", median_seconds(lambda: data.load_fer2013(ours_csv), r),
             median_seconds(lambda: naive_read_csv(ours_csv), nr)),
            (".npz cache -> arrays", median_seconds(lambda: data.load_fer2013(npz), r), float("nan")),
        ]

    print(f"FER-2013 ({len(dataset)} images), {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
          f"median of {args.repeats} (ferkit) / {args.naive_repeats} (naive) runs")
    print(f"| {'task':<22} | {'ferkit s':>9} | {'naive s':>8} | {'speed-up':>8} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 10}|{'-' * 10}|")
    for task, ours, naive in rows:
        measured = not np.isnan(naive)  # no naive counterpart: NaN
        speedup = f"{naive / ours:.1f}x" if measured else "-"
        naive_text = f"{naive:.2f}" if measured else "-"
        print(f"| {task:<22} | {ours:>9.2f} | {naive_text:>8} | {speedup:>8} |")


def naive_zip_to_arrays_as_dataset(path):
    # The naive pipeline has no split column of its own; reuse ferkit's splits
    # so that the naive CSV holds the same rows (only the pixel work is timed).
    images, labels = naive_zip_to_arrays(path)
    splits = np.zeros(len(labels), np.int8)
    return data.FerDataset(images=images, labels=labels, splits=splits)


if __name__ == "__main__":
    main()
