"""Labelled photos: reading a set, splitting it by person, evaluating the pipeline on it, training with it."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit import augmentation, evaluation, photos, training
from ferkit.cli import main
from ferkit.data import CLASS_NAMES
from ferkit.images import sample_image

REAL_FACES = Path(__file__).resolve().parents[2] / "shared" / "real_faces"


def write_photo_set(folder: Path, people: int = 6, per_person: int = 2, with_csv: bool = True) -> Path:
    """Photos of the sample face (varied so no two are equal), labelled happy, sad or neutral, by ``people`` people."""
    face = sample_image()[0:380, 60:440]
    rows = []
    for person in range(people):
        for shot in range(per_person):
            label = ("happy", "sad", "neutral")[(person + shot) % 3]
            image = cv2.convertScaleAbs(cv2.resize(face, (160 + 8 * shot, 160 + 8 * shot)), alpha=1.0,
                                        beta=5 * person)
            relative = f"{label}/person{person}_{shot}.jpg"
            (folder / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / relative), image)
            rows.append({"file": relative, "label": label, "identity": f"person{person}"})
    if with_csv:
        with open(folder / "labels.csv", "w", newline="") as out:
            writer = csv.DictWriter(out, ["file", "label", "identity"])
            writer.writeheader()
            writer.writerows(rows)
    return folder


def test_a_labels_csv_and_class_folders_give_the_same_photos(tmp_path):
    write_photo_set(tmp_path / "set")
    from_csv = photos.read_photo_set(tmp_path / "set", list(CLASS_NAMES))
    (tmp_path / "set" / "labels.csv").rename(tmp_path / "labels.csv.bak")
    from_folders = photos.read_photo_set(tmp_path / "set", list(CLASS_NAMES))
    assert sorted(map(str, from_csv.files)) == sorted(map(str, from_folders.files))
    assert len(from_csv) == 12 and set(from_csv.identities) == {f"person{i}" for i in range(6)}
    assert from_folders.identities is None
    by_file = dict(zip(map(str, from_folders.files), from_folders.labels))
    assert all(by_file[str(f)] == label for f, label in zip(from_csv.files, from_csv.labels))


def test_label_names_are_mapped_and_unknown_ones_listed_not_guessed(tmp_path):
    folder = tmp_path / "set"
    for name in ("happiness", "contempt", "sad"):
        (folder / name).mkdir(parents=True)
        cv2.imwrite(str(folder / name / "a.jpg"), np.zeros((8, 8, 3), np.uint8))
    mapping = photos.parse_label_map(["happiness=happy"])
    found = photos.read_photo_set(folder, list(CLASS_NAMES), mapping)
    assert sorted(CLASS_NAMES[k] for k in found.labels) == ["happy", "sad"]
    assert found.unknown_labels == {"contempt": 1}
    with pytest.raises(photos.PhotoSetError, match="maps to joy, not among the model's classes"):
        photos.read_photo_set(folder, list(CLASS_NAMES), {"happiness": "joy"})
    with pytest.raises(photos.PhotoSetError, match="expected THEIRS=OURS"):
        photos.parse_label_map("happiness")


@pytest.mark.parametrize("row, problem", [("../outside.jpg,happy,a", "leaves the labels file's folder"),
                                          ("gone.jpg,happy,a", "gone.jpg: listed in"),
                                          (",happy,a", "line 4: empty file or label"),
                                          ("happy/person0_0.jpg,happy,a", "line 4: 'happy/person0_0.jpg' is listed "
                                                                           "again \\(first on line 2\\)"),
                                          ("sad/person1_0.jpg,sad,", "line 4: empty identity")])
def test_bad_labels_csv_rows_are_named_or_left_out_and_listed(tmp_path, row, problem):
    write_photo_set(tmp_path, people=2, per_person=1, with_csv=False)
    # Line 1 the header, line 2 a good row, line 3 blank (counted), line 4 the bad row.
    (tmp_path / "labels.csv").write_text("file,label,identity\nhappy/person0_0.jpg,happy,a\n\n" + row + "\n")
    with pytest.raises(photos.PhotoSetError, match=problem + ".*--skip-bad"):
        photos.read_photo_set(tmp_path, list(CLASS_NAMES))
    kept = photos.read_photo_set(tmp_path, list(CLASS_NAMES), skip_bad=True)
    assert [f.name for f in kept.files] == ["person0_0.jpg"] and len(kept.skipped) == 1


def test_labels_csv_in_another_encoding_or_separator_says_what_to_do(tmp_path):
    (tmp_path / "labels.csv").write_bytes("file,label\nhappy/caf\u00e9.jpg,happy\n".encode("latin-1"))
    with pytest.raises(photos.PhotoSetError, match="line 2: not UTF-8 text .*save the file as UTF-8"):
        photos.read_photo_set(tmp_path, list(CLASS_NAMES))
    (tmp_path / "labels.csv").write_text("file;label\nhappy/a.jpg;happy\n")
    with pytest.raises(photos.PhotoSetError, match="separated by ';'"):
        photos.read_photo_set(tmp_path, list(CLASS_NAMES))


def test_class_folders_count_photos_in_sub_folders_and_leave_hidden_files_out(tmp_path):
    face = cv2.resize(sample_image(), (160, 160))
    for relative in ("happy/alice/1.jpg", "happy/._1.jpg", "sad/bob/2.jpg", "sad/loose.jpg", "sad/.hidden/3.jpg",
                     "Surprise /4.jpg"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / relative), face)
    found = photos.read_photo_set(tmp_path, list(CLASS_NAMES))
    named = {f.relative_to(tmp_path).as_posix(): CLASS_NAMES[k] for f, k in zip(found.files, found.labels)}
    assert named == {"happy/alice/1.jpg": "happy", "sad/bob/2.jpg": "sad", "sad/loose.jpg": "sad",
                     "Surprise /4.jpg": "surprise"}


def test_the_split_by_person_keeps_people_whole_and_each_class_near_its_share():
    rng = np.random.default_rng(0)
    people = [f"p{i}" for i in range(400)]
    identities, labels = [], []
    for person in people:  # most people happy or neutral; a rare class carried by two people, as real sets are
        for _ in range(rng.integers(1, 6)):
            identities.append(person)
            labels.append(int(rng.choice([3, 6])))
    for carrier, count in (("actor_a", 60), ("actor_b", 30)):
        identities += [carrier] * count
        labels += [1] * count  # disgust
    photo_set = photos.PhotoSet("made up", [Path(f"{i}.jpg") for i in range(len(labels))], np.array(labels),
                                list(CLASS_NAMES), identities)
    rest, held = photo_set.split_by_identity(0.25)
    assert not set(rest.identities) & set(held.identities)
    assert len(rest) + len(held) == len(photo_set)
    for k in (1, 3, 6):  # each class near a quarter held out, the rare one included
        share = (held.labels == k).sum() / (photo_set.labels == k).sum()
        assert 0.15 < share < 0.4, (CLASS_NAMES[k], share)
    again = photo_set.split_by_identity(0.25)[1]
    assert held.files == again.files  # the same set always splits the same way


def test_people_resampling_widens_with_disagreeing_people():
    identities = ["a"] * 10 + ["b"] * 10
    labels = np.zeros(20, int)
    counted = np.zeros(7, bool)
    counted[0] = True
    agree = evaluation.identity_intervals(identities, labels, np.ones(20, bool), counted, 500)
    assert agree["accuracy"] == [1.0, 1.0] and agree["macro_recall"] == [1.0, 1.0]
    split = evaluation.identity_intervals(identities, labels, np.r_[np.ones(10, bool), np.zeros(10, bool)],
                                          counted, 500)
    assert split["accuracy"][0] == 0.0 and split["accuracy"][1] == 1.0  # resampling people, not photos


def test_evaluate_on_labelled_photos_writes_consistent_figures(random_model, tmp_path, capsys):
    write_photo_set(tmp_path / "set")
    assert main(["evaluate", str(tmp_path / "set"), "--model", str(random_model), "--results",
                 str(tmp_path / "out"), "--min-support", "2", "--resamples", "200", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "out" / "photos.csv")))
    assert len(rows) == metrics["photos"] == 12 and metrics["faces_found"] == 1.0
    correct = [r["predicted"] == r["label"] for r in rows]
    assert metrics["accuracy"] == pytest.approx(np.mean(correct))
    recalls = [np.mean([c for c, r in zip(correct, rows) if r["label"] == name]) for name in ("happy", "sad", "neutral")]
    assert metrics["macro_recall"] == pytest.approx(np.mean(recalls))
    assert sorted(metrics["macro_recall_classes"]) == ["happy", "neutral", "sad"]
    low, high = metrics["intervals"]["accuracy"]
    assert low <= metrics["accuracy"] <= high and metrics["people"] == 6
    assert (tmp_path / "out" / "confusion_matrix.png").stat().st_size > 1000
    assert "macro recall" in printed and "resampling 6 people" in printed


def test_training_with_photos_validates_on_held_out_people(cartoon, tmp_path):
    write_photo_set(tmp_path / "set", people=12)
    config = training.TrainConfig(architecture="lite", epochs=2, batch_size=16, warmup_epochs=0, precision="float32",
                                  photos=[str(tmp_path / "set")], photos_weight=[0.5], photos_held_out=0.3,
                                  epoch_size=64, photos_min_support=1)  # a dozen people: every class counts
    result = training.train(cartoon, config, out=tmp_path / "model" / "fer", checkpoint_dir=tmp_path / "ck",
                            verbose=0)
    assert all(0 <= row["val_photos_macro_recall"] <= 1 for row in result.history)
    assert all(row["val_selection"] == pytest.approx((row["val_accuracy"] + row["val_photos_macro_recall"]) / 2)
               for row in result.history)
    recorded = json.loads((tmp_path / "model" / "fer.meta.json").read_text())["training"]
    (described,) = recorded["photos"]
    assert described["trained_on"] + described["held_out"] == 24 and described["faces_found"] == 1.0
    assert list((tmp_path / "ck" / "photo_crops").glob("crops-*.npz"))  # cut once, reused on a resume


def test_weighted_batches_draw_each_set_in_its_share():
    images = np.zeros((1100, 48, 48), np.uint8)
    images[1000:] = 255  # the last 100 images are "photos"
    weights = np.r_[np.full(1000, 0.7 / 1000), np.full(100, 0.3 / 100)]
    batches = augmentation.make_dataset(images, np.zeros(1100, int), 7, 100, training=True, weights=weights,
                                        epoch_size=2000)
    assert len(batches) == 20
    drawn = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))])
    assert 0.25 < (drawn == 255).mean() < 0.35


def test_progress_in_a_log_is_plain_lines():
    script = ("from ferkit.progress import progress\n"
              "for _ in progress(range(5), 'counting', unit='thing', every=0): pass\n")
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "\r" not in finished.stderr
    assert finished.stderr.splitlines()[-1].startswith("counting: 5/5 things in ")


def test_the_real_faces_split_holds_six_classes_of_40_people_apart():
    if not (REAL_FACES / "labels.csv").is_file():
        pytest.skip(f"{REAL_FACES} not found (the labelled real photos beside the clone)")
    real = photos.read_photo_set(REAL_FACES, list(CLASS_NAMES))
    rest, held = real.split_by_identity()
    assert not set(rest.identities) & set(held.identities)
    counts = np.bincount(held.labels, minlength=len(CLASS_NAMES))
    assert sorted(CLASS_NAMES[k] for k in np.flatnonzero(counts >= 40)) == \
        sorted(["angry", "disgust", "happy", "sad", "surprise", "neutral"])


def test_distilling_with_photos_learns_the_teacher_on_fer_and_the_labels_on_photos(cartoon, random_model, tmp_path,
                                                                                   monkeypatch):
    write_photo_set(tmp_path / "set", people=12)
    seen = {}
    original = training.make_dataset

    def spy(images, labels, *args, targets=None, **kwargs):
        if kwargs.get("training"):
            seen.update(images=images, labels=labels, targets=targets)
        return original(images, labels, *args, targets=targets, **kwargs)

    monkeypatch.setattr(training, "make_dataset", spy)  # where train() looks it up
    config = training.TrainConfig(architecture="lite", epochs=1, batch_size=16, warmup_epochs=0, precision="float32",
                                  teacher=str(random_model), photos=[str(tmp_path / "set")], photos_weight=[0.5],
                                  photos_held_out=0.3, epoch_size=32, photos_min_support=1)
    training.train(cartoon, config, out=tmp_path / "model" / "fer", checkpoint_dir=tmp_path / "ck", verbose=0)
    fer_rows = len(cartoon.split("Training"))
    targets = seen["targets"]
    assert len(targets) == len(seen["images"]) == len(seen["labels"])
    assert np.allclose(targets.sum(1), 1)
    photo_targets = targets[fer_rows:]  # one-hot: the teacher knows FER-2013's faces, the photos have labels
    assert len(photo_targets) and (photo_targets.max(1) == 1).all()
    assert (photo_targets.argmax(1) == seen["labels"][fer_rows:]).all()
    assert (targets[:fer_rows].max(1) < 1).all()  # the teacher's mix on FER-2013's faces


def write_crop_set(folder: Path, faces, per_class: int = 3) -> Path:
    """FER-2013-style 48x48 crops in class folders, the first of each class padded to 64x48 with white columns
    (the face its centred square), the way a crop set such as CK+48 is laid out; labels.csv names shot i's
    person ``person{i}``."""
    rows = []
    for k, name in enumerate(faces.class_names):
        chosen = np.flatnonzero(faces.labels == k)[:per_class]
        (folder / name).mkdir(parents=True, exist_ok=True)
        for shot, index in enumerate(chosen):
            crop = faces.images[index].reshape(48, 48).astype(np.uint8)
            if shot == 0:
                crop = np.pad(crop, ((0, 0), (8, 8)), constant_values=255)
            cv2.imwrite(str(folder / name / f"{index}.png"), crop)
            rows.append({"file": f"{name}/{index}.png", "label": name, "identity": f"person{shot}"})
    with open(folder / "labels.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, ["file", "label", "identity"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_face_crops_are_classified_whole_as_the_model_classifies_crops(cartoon, random_model, tmp_path):
    from ferkit.inference import predict_probabilities
    from ferkit.model import load_model

    write_crop_set(tmp_path / "crops", cartoon)
    assert main(["evaluate", str(tmp_path / "crops"), "--crops", "--model", str(random_model), "--results",
                 str(tmp_path / "out"), "--resamples", "0", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "photos.csv")))
    assert len(rows) == 21 and all(r["face_found"] == "True" for r in rows)
    model, _ = load_model(random_model)
    indices = [int(Path(r["file"]).stem) for r in rows]
    expected = predict_probabilities(model, cartoon.images[indices].reshape(-1, 48, 48).astype(np.uint8))
    found = np.array([[float(r[f"p_{name}"]) for name in cartoon.class_names] for r in rows])
    assert np.allclose(found, expected, atol=1e-4)  # the padded ones too: their centred square is the face
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["face_crops"] is True and metrics["faces_found"] == 1.0


def test_small_images_with_no_face_found_suggest_crops_and_photos_do_not(random_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for name, side in (("small", 48), ("large", 320)):
        for label in ("happy", "sad"):
            (tmp_path / name / label).mkdir(parents=True)
            for shot in range(3):  # noise: no face to find
                cv2.imwrite(str(tmp_path / name / label / f"{shot}.png"), rng.integers(0, 256, (side, side), np.uint8))
        assert main(["evaluate", str(tmp_path / name), "--model", str(random_model), "--results",
                     str(tmp_path / f"out_{name}"), "--resamples", "0", "--no-progress"]) == 0
        hinted = "--crops" in capsys.readouterr().err
        assert hinted == (name == "small"), name


def test_training_on_a_crop_set_uses_every_crop_whole(cartoon, tmp_path):
    with pytest.raises(ValueError, match="no --photos set"):
        training.train(cartoon, training.TrainConfig(photos_crops=True), out=tmp_path / "m" / "fer",
                       checkpoint_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    write_crop_set(tmp_path / "crops", cartoon, per_class=4)
    config = training.TrainConfig(architecture="lite", epochs=1, batch_size=16, warmup_epochs=0, precision="float32",
                                  photos=[str(tmp_path / "crops")], photos_crops=True, photos_weight=[0.5],
                                  epoch_size=32, photos_min_support=1)
    training.train(cartoon, config, out=tmp_path / "model" / "fer", checkpoint_dir=tmp_path / "ck", verbose=0)
    (described,) = json.loads((tmp_path / "model" / "fer.meta.json").read_text())["training"]["photos"]
    assert described["trained_on"] + described["held_out"] == 28 and described["faces_found"] == 1.0
    assert described["face_crops"] is True


def test_photos_without_people_named_train_with_none_held_out(cartoon, tmp_path):
    write_photo_set(tmp_path / "set", people=3, with_csv=False)  # class folders: nobody named
    config = training.TrainConfig(architecture="lite", epochs=1, batch_size=16, warmup_epochs=0, precision="float32",
                                  photos=[str(tmp_path / "set")], epoch_size=32, photos_min_support=1)
    with pytest.raises(photos.PhotoSetError, match="--photos-held-out 0"):
        training.train(cartoon, config, out=tmp_path / "m" / "fer", checkpoint_dir=tmp_path / "ck0", verbose=0)
    config = training.TrainConfig(**{**config.__dict__, "photos_held_out": 0.0})
    result = training.train(cartoon, config, out=tmp_path / "model" / "fer", checkpoint_dir=tmp_path / "ck", verbose=0)
    assert "val_photos_macro_recall" not in result.history[0]  # chosen on PublicTest alone
    recorded = json.loads((tmp_path / "model" / "fer.meta.json").read_text())["training"]
    (described,) = recorded["photos"]
    assert described["trained_on"] == 6 and described["held_out"] == 0 and "best_photos_macro_recall" not in recorded


def strict_json(path: Path) -> dict:
    """The file as JSON that any parser reads: NaN and Infinity are refused."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_small_set_gives_strict_json_and_a_csv_is_named_by_its_folder(random_model, tmp_path, monkeypatch, capsys):
    write_photo_set(tmp_path / "mine")  # 12 photos: no class reaches 40
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "mine/labels.csv", "--model", str(random_model), "--no-progress"]) == 0
    metrics = strict_json(tmp_path / "results" / "photos" / "mine" / "metrics.json")
    assert metrics["macro_recall"] is None and metrics["intervals"]["macro_recall"] is None
    assert main(["evaluate", "mine", "--model", str(random_model), "--min-support", "0", "--results", "zero",
                 "--no-progress"]) == 0
    metrics = strict_json(tmp_path / "zero" / "metrics.json")
    assert sorted(metrics["macro_recall_classes"]) == ["happy", "neutral", "sad"]  # not the classes with no photo
    assert main(["evaluate", "mine", "--model", str(random_model), "--resamples", "-5", "--no-progress"]) == 2
    assert "--resamples -5" in capsys.readouterr().err


def test_evaluate_held_out_scores_the_people_the_model_did_not_train_on(random_model, tmp_path, capsys):
    write_photo_set(tmp_path / "set", people=12)
    trained = tmp_path / "trained" / "fer"
    trained.parent.mkdir()
    for suffix in (".json", ".h5", ".meta.json"):
        (tmp_path / "trained" / f"fer{suffix}").write_bytes(Path(f"{random_model}{suffix}").read_bytes())
    meta_path = tmp_path / "trained" / "fer.meta.json"
    for fraction, expected in ((0.5, 0.5), (0.0, photos.HELD_OUT_FRACTION)):
        meta = json.loads(meta_path.read_text())
        meta["training"] = {"photos": [{"path": str(tmp_path / "set"), "held_out_fraction": fraction}]}
        meta_path.write_text(json.dumps(meta))
        assert main(["evaluate", str(tmp_path / "set"), "--held-out", "--model", str(trained), "--results",
                     str(tmp_path / "out"), "--resamples", "0", "--no-progress"]) == 0
        held = photos.read_photo_set(tmp_path / "set", list(CLASS_NAMES)).split_by_identity(expected)[1]
        assert json.loads((tmp_path / "out" / "metrics.json").read_text())["photos"] == len(held)
        assert ("seen in training" in capsys.readouterr().err) == (fraction == 0.0)


def test_training_says_which_photos_it_left_out_and_refuses_a_set_it_cannot_use(cartoon, tmp_path, capsys):
    write_photo_set(tmp_path / "set", people=3, with_csv=False)
    (tmp_path / "set" / "contempt").mkdir()
    cv2.imwrite(str(tmp_path / "set" / "contempt" / "x.jpg"), cv2.resize(sample_image(), (160, 160)))
    cv2.imwrite(str(tmp_path / "set" / "happy" / "noise.png"), np.random.default_rng(0).integers(0, 256, (160, 160),
                                                                                              np.uint8))
    config = training.TrainConfig(architecture="lite", epochs=1, batch_size=16, warmup_epochs=0, precision="float32",
                                  photos=[str(tmp_path / "set")], photos_held_out=0.0, epoch_size=32)
    training.train(cartoon, config, out=tmp_path / "model" / "fer", checkpoint_dir=tmp_path / "ck", verbose=0)
    said = capsys.readouterr().err
    assert "training on 6 photos, 0 held out; left out: 1 labels not among the classes, 1 no face found" in said
    (described,) = json.loads((tmp_path / "model" / "fer.meta.json").read_text())["training"]["photos"]
    assert described["left_out"] == {"labels not among the classes": 1, "unreadable": 0, "no face found": 1}
    noise = tmp_path / "noise"
    for label in ("happy", "sad"):
        (noise / label).mkdir(parents=True)
        cv2.imwrite(str(noise / label / "0.png"), np.random.default_rng(1).integers(0, 256, (48, 48), np.uint8))
    config = training.TrainConfig(architecture="lite", epochs=1, batch_size=16, warmup_epochs=0, precision="float32",
                                  photos=[str(noise)], photos_held_out=0.0, epoch_size=32)
    write_crop_set(tmp_path / "crops", cartoon)  # 48x48 crops: the detector misses many of them
    crop_config = training.TrainConfig(**{**config.__dict__, "photos": [str(tmp_path / "crops")]})
    training.train(cartoon, crop_config, out=tmp_path / "crop_model" / "fer", checkpoint_dir=tmp_path / "ck3",
                   verbose=0)
    assert "add --photos-crops" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no photo to train on .*2 no face found.*--photos-crops"):
        training.train(cartoon, config, out=tmp_path / "never" / "fer", checkpoint_dir=tmp_path / "ck2", verbose=0)
    assert not (tmp_path / "never").exists()
