"""Image inputs, face detection, the shared preprocessing, prediction, annotation and video."""

import io
import os
import stat
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

keras = pytest.importorskip("keras")

from ferkit import augmentation, faces, images  # noqa: E402
from ferkit.cli import main  # noqa: E402
from ferkit.inference import predict_probabilities, to_model_input, tta_views  # noqa: E402
from ferkit.prediction import Predictor, annotate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "ferkit" / "models"  # the shipped models


@pytest.fixture(scope="module")
def astronaut():
    return images.sample_image()


@pytest.fixture(scope="module")
def face_patch(astronaut):
    """The astronaut's head and shoulders, 160x160, to paste into generated scenes."""
    return cv2.resize(astronaut[30:230, 120:320], (160, 160))


@pytest.fixture(scope="module")
def predictor(random_model):
    return Predictor(random_model)


# ---------------------------------------------------------------- inputs


def test_every_input_kind_gives_the_same_bgr(astronaut, tmp_path):
    rgb = np.ascontiguousarray(astronaut[:, :, ::-1])
    png = cv2.imencode(".png", astronaut)[1].tobytes()
    (tmp_path / "a.png").write_bytes(png)
    for source, order in [(tmp_path / "a.png", "rgb"), (str(tmp_path / "a.png"), "rgb"), (png, "rgb"),
                          (rgb, "rgb"), (astronaut, "bgr"), (Image.fromarray(rgb), "rgb"),
                          (np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "rgb"),
                          (rgb.astype(np.uint16) * 257, "rgb"), (rgb / 255.0, "rgb")]:
        np.testing.assert_array_equal(images.load_image(source, order), astronaut, err_msg=str(type(source)))


def test_gray_and_webp_inputs(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY)
    assert (images.load_image(gray) == gray[..., None]).all()
    webp = cv2.imencode(".webp", astronaut, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    np.testing.assert_array_equal(images.load_image(webp), astronaut)


def test_exif_orientation_is_honoured(astronaut):
    tall = np.ascontiguousarray(astronaut[:, :300, ::-1])  # 512 high, 300 wide, RGB
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(tall).save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    loaded = images.load_image(buffer.getvalue())
    assert loaded.shape[:2] == (300, 512)


@pytest.mark.parametrize("source, expected", [
    (b"", "empty file (0 bytes)"),
    (b"GIF89a-not-really" * 3, "cannot decode"),
    (cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()[:20], "cannot decode (corrupt or truncated)"),
    ([1, 2, 3], "unsupported input type list"),
    (np.zeros((4, 4, 2), np.uint8), "got shape (4, 4, 2)"),
    (np.full((4, 4), -3, np.int32), "int32 values from -3 to -3, not 0-255; pass value_range"),
])
def test_bad_inputs_say_what_is_wrong(source, expected):
    with pytest.raises(images.ImageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        images.load_image(source)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(images.ImageError, match="no such file"):
        images.load_image(tmp_path / "nope.jpg")
    with pytest.raises(images.ImageError, match="is a folder"):
        images.load_image(tmp_path)


# ---------------------------------------------------------------- detection


def test_yunet_finds_the_sample_face(astronaut):
    found = faces.detect_faces(astronaut)
    assert len(found) == 1
    x, y, w, h = found[0].box
    assert found[0].score > 0.8 and 60 < w < 140 and 80 < h < 160
    inside = (found[0].landmarks[:, 0] > x) & (found[0].landmarks[:, 0] < x + w) & \
             (found[0].landmarks[:, 1] > y) & (found[0].landmarks[:, 1] < y + h)
    assert inside.all()


def scene(face_patch, positions, size=(360, 720)):
    canvas = np.full((*size, 3), 90, np.uint8)
    for x, y in positions:
        canvas[y:y + 160, x:x + 160] = face_patch
    return canvas


def test_several_faces_come_left_to_right(face_patch):
    found = faces.detect_faces(scene(face_patch, [(500, 150), (40, 20), (270, 100)]))
    assert len(found) == 3
    xs = [f.box[0] for f in found]
    assert xs == sorted(xs) and xs[0] < 200 < xs[1] < 450 < xs[2]


def test_no_face_is_an_empty_list():
    assert faces.detect_faces(np.full((240, 320, 3), 128, np.uint8)) == []


def test_large_images_are_searched_downscaled(astronaut):
    small = faces.detect_faces(astronaut)[0].box
    big = faces.detect_faces(cv2.resize(astronaut, (2560, 2560)), max_pixels=640 * 640)[0].box
    np.testing.assert_allclose(np.array(big) / 5, small, atol=8)


def test_a_long_strip_of_faces_is_not_shrunk_below_the_detector(face_patch):
    # 12 faces side by side: a longest-side limit would shrink them to 1280/1920 of their size and more.
    strip = np.hstack([face_patch] * 24)  # 3840x160: 0.6 megapixels, under the budget, so searched as it is
    assert len(faces.detect_faces(strip)) == 24


def test_the_upscaled_search_adds_new_faces_of_a_real_size_and_faces_seen_twice(monkeypatch, random_model):
    """The merge of the two searches, with the detector's answers per search scale made up."""
    first = faces.Face((100, 100, 120, 120), 0.9)
    seen_twice = faces.Face((500, 50, 100, 100), 0.45)  # under MIN_FACE_SCORE, but the enlarged search agrees
    answers = {1.0: [first, seen_twice,
                     faces.Face((20, 300, 90, 90), 0.45),  # as low, and only this search sees it: dropped
                     faces.Face((250, 20, 90, 90), 0.35)],  # below MIN_FACE_SCORE - CONFIRMED_SCORE_DISCOUNT
               2.0: [faces.Face((104, 98, 118, 122), 0.95),  # the first search's face again: not added
                     faces.Face((400, 200, 80, 80), 0.7),  # a face only the enlarged search finds: added
                     faces.Face((300, 380, 40, 40), 0.8),  # smaller than UPSCALE_SEARCH_MIN_FACE: texture
                     faces.Face((503, 52, 98, 98), 0.42),  # seen_twice, again
                     faces.Face((252, 22, 88, 88), 0.36)]}  # with the 0.35 face: both too low
    calls = []
    monkeypatch.setattr(faces, "_search", lambda image, detector, min_score, scale: (
        calls.append(scale), [f for f in answers[scale] if f.score >= min_score])[1])
    scene = np.full((480, 640, 3), 128, np.uint8)
    assert faces.detect_faces(scene) == [first] and calls == [1.0]
    both = faces.detect_faces(scene, upscale_search=True)
    assert both == [first, answers[2.0][1], seen_twice] and calls == [1.0, 1.0, 2.0]
    assert faces.detect_faces(scene, upscale_search=True, confirmed_discount=0) == [first, answers[2.0][1]]
    assert faces.UPSCALE_SEARCH_MIN_FACE > 40
    predictor = Predictor(random_model)
    assert len(predictor.predict(scene, "bgr").faces) == 3  # photos: both searches, by default
    assert len(predictor.predict(scene, "bgr", upscale_search=False).faces) == 1
    assert len(Predictor(random_model, upscale_search=False).predict(scene, "bgr").faces) == 1


def test_extreme_aspect_ratios_are_searched_without_error():
    for shape in [(8, 70000, 3), (70000, 8, 3)]:
        assert faces.detect_faces(np.full(shape, 128, np.uint8), max_pixels=100_000) == []


def test_mtcnn_finds_the_sample_face(astronaut):
    pytest.importorskip("mtcnn")
    found = faces.detect_faces(astronaut, "mtcnn")
    yunet = faces.detect_faces(astronaut)[0]
    assert len(found) == 1 and faces.Face.__name__ == "Face"
    assert np.hypot(*np.subtract(found[0].center, yunet.center)) < 25


def test_haar_works_or_says_why(astronaut):
    try:
        found = faces.detect_faces(astronaut, "haar")
    except faces.DetectorUnavailable as error:
        assert not hasattr(cv2, "CascadeClassifier") and "OpenCV 5 removed them" in str(error)
    else:
        assert len(found) == 1


def test_unknown_detector():
    with pytest.raises(ValueError, match="unknown face detector 'dlib'"):
        faces.get_detector("dlib")


def test_crop_is_square_with_margin_and_survives_the_border():
    gray = np.tile(np.arange(200, dtype=np.uint8), (100, 1))
    face = faces.Face((10, 20, 40, 60), 1.0)
    crop = faces.crop_face(gray, face, 48, margin=0.0)
    assert crop.shape == (48, 48)
    # Square of side 60 centred on (30, 50): columns 0..60 of a horizontal ramp.
    assert abs(int(crop[24, 0]) - 0) <= 2 and abs(int(crop[24, -1]) - 60) <= 3
    edge = faces.crop_face(gray, faces.Face((0, 0, 30, 30), 1.0), 48, margin=0.5)
    assert edge.shape == (48, 48) and edge[:, 0].max() == 0  # replicated border, not wrapped


def test_crop_offset_moves_the_square_down():
    gray = np.tile(np.arange(200, dtype=np.uint8)[:, None], (1, 100))  # a vertical ramp: value = row
    face = faces.Face((20, 40, 60, 60), 1.0)
    plain = faces.crop_face(gray, face, 60, margin=0.0)
    lower = faces.crop_face(gray, face, 60, margin=0.0, offset=0.1)
    assert abs(int(lower[30, 30]) - int(plain[30, 30]) - 6) <= 1  # 0.1 of a 60-pixel side


def test_eye_angle_sign_and_missing_landmarks():
    level = np.array([[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]], np.float32)
    tilted = level.copy()
    tilted[1, 1] = 40  # the image-right eye 20 px lower over 20 px: 45 degrees
    assert faces.eye_angle(faces.Face((0, 0, 40, 50), 1.0, level)) == 0.0
    assert np.isclose(faces.eye_angle(faces.Face((0, 0, 40, 50), 1.0, tilted)), np.pi / 4)
    assert faces.eye_angle(faces.Face((0, 0, 40, 50), 1.0)) == 0.0


@pytest.mark.parametrize("degrees", [-18, 12])
def test_aligned_crop_of_a_tilted_face_matches_the_upright_one(astronaut, degrees):
    import cv2

    upright = faces.detect_faces(astronaut)[0]
    turn = cv2.getRotationMatrix2D(upright.center, degrees, 1.0)
    tilted_image = cv2.warpAffine(astronaut, turn, astronaut.shape[1::-1], borderMode=cv2.BORDER_REFLECT)
    # The same face, turned: same box centre, landmarks turned with it (the detector's own landmark
    # accuracy is measured by benchmarks/bench_pipeline.py, not here).
    landmarks = np.c_[upright.landmarks, np.ones(5)] @ turn.T
    tilted = faces.Face(upright.box, upright.score, landmarks.astype(np.float32))
    assert abs(np.degrees(faces.eye_angle(tilted) - faces.eye_angle(upright)) + degrees) < 0.1
    gray, tilted_gray = images.to_gray(astronaut), images.to_gray(tilted_image)
    reference = faces.crop_face(gray, upright, 48, 0.0, 0.05, align=True).astype(float)
    aligned = faces.crop_face(tilted_gray, tilted, 48, 0.0, 0.05, align=True).astype(float)
    unaligned = faces.crop_face(tilted_gray, tilted, 48, 0.0, 0.05, align=False).astype(float)
    # Levelled, the tilted face lines up with the upright one far better than its plain crop does.
    assert np.abs(aligned - reference).mean() < 0.25 * np.abs(unaligned - reference).mean()


def test_low_contrast_lift_stretches_only_flat_crops():
    rng = np.random.default_rng(0)
    normal = np.clip(rng.normal(130, 50, (48, 48)), 0, 255).astype(np.uint8)
    dim = np.rint(normal * 0.4 + 20).astype(np.uint8)
    lift = faces.low_contrast_settings(np.stack([normal, dim, normal, normal]), percentile=30)
    assert lift["below_std"] > dim.std() and lift["mean"] == pytest.approx(normal.mean(), abs=0.01)
    assert faces.lift_low_contrast(normal, **lift) is normal  # contrast within the training range: untouched
    lifted = faces.lift_low_contrast(dim, **lift)
    assert lifted.dtype == np.uint8
    assert abs(lifted.mean() - lift["mean"]) < 1 and abs(lifted.std() - lift["std"]) < 1
    # A linear stretch: the dim crop's pixels keep their order and come back close to the original's.
    assert np.corrcoef(lifted.ravel(), normal.ravel())[0, 1] > 0.99
    flat = np.full((48, 48), 90, np.uint8)  # no contrast at all: brought to the mean, not blown up
    assert (faces.lift_low_contrast(flat, **lift) == round(lift["mean"])).all()


def test_crop_face_applies_the_lift_after_resizing(astronaut):
    face = faces.detect_faces(astronaut)[0]
    gray = images.to_gray(astronaut)
    dim = np.rint(gray * 0.3 + 40).astype(np.uint8)
    lift = {"below_std": 35.0, "mean": 128.0, "std": 55.0}
    plain = faces.crop_face(dim, face, 48, -0.05)
    assert plain.std() < 35
    np.testing.assert_array_equal(faces.crop_face(dim, face, 48, -0.05, low_contrast=lift),
                                  faces.lift_low_contrast(plain, **lift))
    np.testing.assert_array_equal(faces.crop_face(gray, face, 48, -0.05, low_contrast=lift),
                                  faces.crop_face(gray, face, 48, -0.05))


def test_predictor_align_defaults_to_the_model_and_can_be_turned_off(predictor, random_model):
    assert predictor.align == predictor.meta.face_align
    assert Predictor(random_model, align=not predictor.meta.face_align).align is (not predictor.meta.face_align)


# ---------------------------------------------------------------- one preprocessing path


def test_training_and_inference_feed_the_model_the_same_way(predictor, astronaut):
    crops = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    batches = augmentation.make_dataset(crops, np.zeros(5, int), 7, 8, training=False)
    np.testing.assert_array_equal(batches[0][0], to_model_input(crops))

    seen = []
    real_forward = predictor._forward

    def recorder(x):
        seen.append(np.array(x))
        return real_forward(x)

    predictor._forward = recorder
    try:
        result = predictor.predict(astronaut, "bgr")
    finally:
        predictor._forward = real_forward
    found = faces.detect_faces(astronaut)
    meta = predictor.meta
    expected = faces.crop_face(images.to_gray(astronaut), found[0], 48, meta.face_margin, meta.face_offset,
                               predictor.align, meta.face_low_contrast)
    np.testing.assert_array_equal(seen[0], to_model_input(expected[None]))
    assert len(result.faces) == 1


def test_tta_is_the_same_in_predict_and_evaluate(random_model):
    plain, augmented = Predictor(random_model), Predictor(random_model, tta=True)
    crops = np.random.default_rng(1).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    views = tta_views(to_model_input(crops))
    assert len(views) == 10
    mirrored = crops[:, :, ::-1]
    np.testing.assert_array_equal(views[1][..., 0], mirrored)
    expected = np.mean([plain.classify_crops(view[..., 0].astype(np.uint8)) for view in views], axis=0)
    np.testing.assert_allclose(augmented.classify_crops(crops), expected, atol=1e-6)
    # evaluate's path (model.predict in batches) gives the same numbers as Predictor's compiled graph
    np.testing.assert_allclose(predict_probabilities(plain.model, crops, tta=True), expected, atol=1e-5)


# ---------------------------------------------------------------- prediction and annotation


def test_predictions_carry_box_label_and_probabilities(predictor, face_patch):
    result = predictor.predict(scene(face_patch, [(40, 20), (500, 150)]), "bgr")
    assert len(result.faces) == 2 and result.faces[0].box[0] < result.faces[1].box[0]
    for face in result.faces:
        assert list(face.probabilities) == predictor.class_names
        assert sum(face.probabilities.values()) == pytest.approx(1, abs=1e-4)
        assert face.label == max(face.probabilities, key=face.probabilities.get)
        assert face.score == face.probabilities[face.label]
    assert json.loads(json.dumps([f.as_dict() for f in result.faces]))[0]["label"] == result.faces[0].label


def test_no_face_is_a_normal_result(predictor):
    result = predictor.predict(np.full((200, 300, 3), 200, np.uint8), "bgr", name="blank")
    assert result.faces == [] and result.message == "blank: no face found"
    assert result.annotate().shape == (200, 300, 3)


@pytest.mark.parametrize("size", [160, 640, 3000])
def test_annotation_draws_only_around_the_face(predictor, face_patch, size):
    image = cv2.resize(scene(face_patch, [(280, 100)]), (size * 2, size))
    result = predictor.predict(image, "bgr")
    drawn = annotate(image, result.faces)
    changed = np.argwhere((drawn != image).any(axis=2))
    x, y, w, h = result.faces[0].box
    line = max(3, round(2 * max(image.shape[:2]) / 640))  # annotate() scales its lines with the image
    assert len(changed) > 0
    assert changed[:, 1].min() >= x - line and changed[:, 0].max() <= y + h + line  # box and label only
    assert (drawn[-5:, -5:] == image[-5:, -5:]).all()


def test_a_tracked_face_s_label_names_its_id():
    """In an annotated video each box reads "#id label NN%", as the page's boxes do; photos have no id."""
    from dataclasses import replace

    from ferkit.prediction import FacePrediction

    image = np.full((240, 480, 3), 255, np.uint8)
    face = FacePrediction((150, 100, 120, 120), 0.9, "happy", 0.8, {"happy": 0.8})
    label_pixels = lambda drawn: int((drawn[:100] != 255).any(axis=2).sum())  # above the box: the label only
    plain, tracked = label_pixels(annotate(image, [face])), label_pixels(annotate(image, [replace(face, face_id=3)]))
    assert 0 < plain < tracked  # the same label, wider by "#3 "


# ---------------------------------------------------------------- video


def test_video_round_trip_tracks_one_moving_face(predictor, face_patch, tmp_path):
    clip, frames = tmp_path / "clip.mp4", 24
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 12, (480, 240))
    for i in range(frames):
        writer.write(scene(face_patch, [(20 + 8 * i, 40)], size=(240, 480)))
    writer.release()
    out = tmp_path / "out.mp4"
    table = predictor.predict_video(clip, out, stride=2, progress=False)
    assert table.attrs["frames"] == frames
    assert list(table["frame"]) == list(range(0, frames, 2))
    assert table["face_id"].nunique() == 1
    assert (np.diff(table["x"]) > 0).all()  # the face moves right
    np.testing.assert_allclose(table[[c for c in table if c.startswith("p_")]].sum(axis=1), 1, atol=1e-4)
    check = cv2.VideoCapture(str(out))
    assert int(check.get(cv2.CAP_PROP_FRAME_COUNT)) == frames


def test_a_stopped_video_leaves_the_earlier_output_and_a_finished_one_gets_ordinary_permissions(
        predictor, face_patch, tmp_path):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 12, (480, 240))
    for i in range(6):
        writer.write(scene(face_patch, [(20 + 8 * i, 40)], size=(240, 480)))
    writer.release()
    out = tmp_path / "out.avi"
    out.write_bytes(b"the earlier result")
    os.chmod(out, 0o640)

    def stop_at_frame_3(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predictor.predict_video(clip, out, progress=False, on_progress=stop_at_frame_3)
    assert out.read_bytes() == b"the earlier result" and sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.avi", "out.avi"]  # no temporary file left behind
    predictor.predict_video(clip, out, progress=False)
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the replaced file's permissions
    fresh = tmp_path / "fresh.avi"
    predictor.predict_video(clip, fresh, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert int(cv2.VideoCapture(str(fresh)).get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_video_that_cannot_open(predictor, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(images.ImageError, match="cannot open as a video"):
        predictor.predict_video(tmp_path / "bad.mp4", progress=False)


# ---------------------------------------------------------------- command line and the shipped model


def test_predict_command_writes_annotation_and_json(random_model, astronaut, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "photo.jpg"), astronaut)
    assert main(["predict", str(tmp_path / "photo.jpg"), "--model", str(random_model), "--out",
                 str(tmp_path / "out"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document
    faces_json = document["images"][0]["faces"]
    assert len(faces_json) == 1 and set(faces_json[0]) >= {"box", "label", "score", "probabilities"}
    assert document["images"][0]["annotated"] == str(tmp_path / "out" / "photo_annotated.jpg")
    assert (tmp_path / "out" / "photo_annotated.jpg").exists()


def test_predict_command_on_a_folder_reports_bad_files(random_model, astronaut, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), astronaut)
    (folder / "b.jpg").write_bytes(b"")
    # The run goes on past the bad file, and the exit status says something was skipped.
    assert main(["predict", str(folder), "--model", str(random_model), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "a.png" in captured.out and "b.jpg: empty file" in captured.err
    assert (tmp_path / "out" / "a_annotated.png").exists()


@pytest.mark.skipif(not (MODELS / "fer.json").exists(), reason="no shipped model (fer.json) in this checkout yet")
def test_demo_with_the_shipped_model_sees_a_smile(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("sample (skimage.data.astronaut): happy")
    assert (tmp_path / "astronaut_annotated.jpg").exists()
