"""Checks on the real FER-2013 archive; skipped unless $FERKIT_DATA points at it."""

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferkit import data
from ferkit.data import CLASS_NAMES, SPLITS, load_fer2013

# Per-class counts from the dataset's README, under the original challenge ids.
TRAIN = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830, "surprise": 3171}
TEST = {"angry": 958, "disgust": 111, "fear": 1024, "happy": 1774, "neutral": 1233, "sad": 1247, "surprise": 831}


@pytest.fixture(scope="module")
def real(real_fer2013):
    if not zipfile.is_zipfile(real_fer2013):
        pytest.skip(f"{real_fer2013} is not the Kaggle zip these checks are written for")
    return load_fer2013(real_fer2013, progress=False)


@pytest.fixture(scope="module")
def converted_csv(real, tmp_path_factory):
    return data.write_csv(real, tmp_path_factory.mktemp("csv") / "fer2013.csv", progress=False)


def test_counts_match_the_dataset_readme(real):
    counts = real.counts()
    assert {s: sum(c.values()) for s, c in counts.items()} == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert counts["Training"] == TRAIN
    assert {c: counts["PublicTest"][c] + counts["PrivateTest"][c] for c in CLASS_NAMES} == TEST
    assert real.images.shape == (35887, 48, 48) and real.images.dtype == np.uint8


def test_every_row_equals_its_decoded_jpeg(real, real_fer2013):
    with zipfile.ZipFile(real_fer2013) as archive:
        names = [i.filename for i in archive.infolist() if not i.is_dir()]

        def key(name):
            split, number = name.rsplit("/", 1)[1].split(".")[0].split("_")
            return SPLITS.index(split), int(number), name

        names.sort(key=key)
        assert len(names) == len(real)
        for name, image, label in zip(names, real.images, real.labels):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read(name)))), image, err_msg=name)
            assert name.split("/")[-2] == CLASS_NAMES[label]


def test_csv_has_original_ids_and_reloads_identically(real, converted_csv):
    lines = converted_csv.read_bytes().split(b"\n")
    assert lines[0] == b"emotion,pixels,Usage" and len(lines) == 35887 + 2 and lines[-1] == b""
    emotions = np.array([int(line.split(b",", 1)[0]) for line in lines[1:-1]])
    np.testing.assert_array_equal(emotions, real.labels)  # canonical index == original id
    # Original ids per README: 3 = Happy, 1 = Disgust.
    assert (emotions == 3).sum() == 7215 + 1774 and (emotions == 1).sum() == 436 + 111
    again = load_fer2013(converted_csv)
    np.testing.assert_array_equal(again.images, real.images)
    np.testing.assert_array_equal(again.splits, real.splits)


def test_extracted_folder_gives_identical_arrays(real, real_fer2013, tmp_path):
    with zipfile.ZipFile(real_fer2013) as archive:
        archive.extractall(tmp_path)
    folder = load_fer2013(tmp_path, progress=False)
    np.testing.assert_array_equal(folder.images, real.images)
    np.testing.assert_array_equal(folder.labels, real.labels)
    np.testing.assert_array_equal(folder.splits, real.splits)


def test_splits_have_matching_image_statistics(real):
    stats = {s: data.image_stats(real.split(s).images) for s in SPLITS}
    for split in ("PublicTest", "PrivateTest"):
        for key in ("mean", "contrast"):
            assert abs(stats[split][key] - stats["Training"][key]) < 0.05 * stats["Training"][key]
        assert abs(stats[split]["sharpness"] - stats["Training"]["sharpness"]) < 0.15 * stats["Training"]["sharpness"]


ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "ferkit" / "models"  # the shipped models


@pytest.mark.parametrize("name, metrics", [
    pytest.param(name, metrics, marks=pytest.mark.skipif(not (ROOT / metrics).exists(), reason=f"no shipped {metrics}"))
    for name, metrics in (("fer", "results/metrics.json"), ("fer_lite", "results/fer_lite/metrics.json"))])
def test_shipped_model_in_plain_keras_reproduces_reported_accuracy(real, tmp_path, name, metrics):
    """The README's headline: fer.json + fer.h5 (and fer_lite's), loaded without ferkit, score what metrics.json says."""
    reported = json.loads((ROOT / metrics).read_text())
    for split in ("PublicTest", "PrivateTest"):
        part = real.split(split)
        np.save(tmp_path / f"{split}.npy", part.images)
        np.save(tmp_path / f"{split}_labels.npy", part.labels)
    script = f"""
        import json, sys, numpy as np, keras
        model = keras.models.model_from_json(open({str(MODELS / f"{name}.json")!r}).read())
        model.load_weights({str(MODELS / f"{name}.h5")!r})
        # The documented preprocessing: (N, 48, 48, 1) float32 grayscale, pixel values 0-255.
        scores = {{}}
        for split in ("PublicTest", "PrivateTest"):
            faces = np.load(split + ".npy")[..., None].astype("float32")
            predicted = model.predict(faces, batch_size=256, verbose=0).argmax(axis=1)
            scores[split] = float((predicted == np.load(split + "_labels.npy")).mean())
        assert not any(m.startswith("ferkit") for m in sys.modules), "ferkit was imported"
        print("SCORES", json.dumps(scores))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.split("SCORES", 1)[1])
    for split, accuracy in scores.items():
        # One image of 3,589 is 0.00028: allow a single float round-off flip, no more.
        assert abs(accuracy - reported[split]["accuracy"]) <= 0.0003, (split, accuracy, reported[split]["accuracy"])
