"""Levers for real photos that need no new training run: crop geometry, a neutral offset, a refitted last layer.

    python benchmarks/real_faces_levers.py crops fer fer_lite      # crop margin x offset x eye alignment
    python benchmarks/real_faces_levers.py neutral fer fer_lite    # a constant added to neutral's log-probability
    python benchmarks/real_faces_levers.py last-layer fer fer_lite # each network's last layer refitted with photos

Photos: ``--photos`` (default ../shared/real_faces) split by person as
``train --photos`` splits it: the training people and the held-out people
(its validation part). Each photo's largest face is found once (YuNet, both
searches, as ``Predictor``) and cut with each setting; a photo without a face
counts as a miss. Macro recall is over the classes with 40 or more photos.

- ``crops``: every margin x offset x alignment on both parts; the shipped
  models never saw either part, so the training people are a second,
  larger check of any setting chosen on the held-out people.
- ``neutral``: PublicTest accuracy and held-out macro recall with neutral's
  log-probability raised by each offset (a prior correction for the class
  real photos show most).
- ``last-layer``: each network's last (logits) layer refitted by L-BFGS on
  its penultimate features of FER-2013 Training (and mirror images) and the
  training people's faces (and mirrors), the photos weighted to ``W`` of the
  loss and their classes balanced by (largest class / class)^B, an L2 pull
  of strength MU towards the shipped weights; PublicTest and held-out macro
  recall of the resulting average. No crop, weight or FER-2013 image outside
  Training is used to fit.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools

import numpy as np

from common import ROOT  # first: puts this checkout's ferkit on sys.path
from ferkit import data, faces, photos
from ferkit.evaluation import MIN_SUPPORT, class_recalls
from ferkit.images import load_image, to_gray
from ferkit.inference import predict_probabilities, to_model_input
from ferkit.model import load_model

CACHE = ROOT / "checkpoints" / "real_faces_levers"
MARGINS, OFFSETS = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2), (-0.05, 0.0, 0.05, 0.1)


def largest_faces(photo_set: photos.PhotoSet) -> list:
    """Each photo's largest face (``faces.Face``) or None, found once and cached by the photos' paths and sizes."""
    digest = hashlib.sha256("".join(f"{p}\0{p.stat().st_size}\n" for p in photo_set.files).encode()).hexdigest()[:16]
    cache = CACHE / f"faces-{digest}.npz"
    if cache.is_file():
        with np.load(cache) as stored:
            return [faces.Face(tuple(int(v) for v in box), float(score), landmarks.astype(np.float32)) if found else None
                    for box, score, landmarks, found in zip(stored["boxes"], stored["scores"], stored["landmarks"],
                                                           stored["found"])]
    found = []
    for path in photo_set.files:
        candidates = faces.detect_faces(load_image(path), "yunet", upscale_search=True)
        found.append(max(candidates, key=lambda f: f.box[2] * f.box[3]) if candidates else None)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, found=np.array([f is not None for f in found]),
             boxes=np.array([f.box if f else (0, 0, 0, 0) for f in found]),
             scores=np.array([f.score if f else 0.0 for f in found]),
             landmarks=np.array([np.asarray(f.landmarks, float) if f and f.landmarks is not None else np.zeros((5, 2))
                                 for f in found]))
    return largest_faces(photo_set)


def cut(photo_set, found: list, settings: list[tuple], low_contrast) -> np.ndarray:
    """(len(settings), N, 48, 48) uint8 crops, one per (margin, offset, align) setting; zeros where no face was
    found. Each photo is read once for all settings."""
    crops = np.zeros((len(settings), len(found), 48, 48), np.uint8)
    for i, (path, face) in enumerate(zip(photo_set.files, found)):
        if face is not None:
            gray = to_gray(load_image(path))
            for k, (margin, offset, align) in enumerate(settings):
                crops[k, i] = faces.crop_face(gray, face, 48, margin, offset, align, low_contrast)
    return crops


def macro(probabilities: np.ndarray, labels: np.ndarray, found: np.ndarray) -> tuple[float, np.ndarray]:
    classes = np.flatnonzero(np.bincount(labels, minlength=probabilities.shape[1]) >= MIN_SUPPORT)
    recalls = class_recalls(np.where(found, probabilities.argmax(1), -1), labels, classes)
    return recalls.mean(), recalls


def crops_table(models: list[str], parts: dict) -> None:
    print(f"{'model':<10} {'margin':>6} {'offset':>6} {'align':>5} {'training people':>15} {'held-out':>8}")
    loaded = {name: load_model(name) for name in models}
    settings = list(itertools.product(MARGINS, OFFSETS, (False, True)))
    cuts = {part: cut(s, f, settings, loaded[models[0]][1].face_low_contrast) for part, (s, f) in parts.items()}
    for k, (margin, offset, align) in enumerate(settings):
        for name, (model, meta) in loaded.items():
            scores = [macro(predict_probabilities(model, cuts[part][k]), s.labels,
                            np.array([x is not None for x in f]))[0] for part, (s, f) in parts.items()]
            shipped = " (shipped)" if (margin, offset, align) == (meta.face_margin, meta.face_offset, meta.face_align) else ""
            print(f"{name:<10} {margin:>6.2f} {offset:>6.2f} {int(align):>5} {scores[0]:>15.3f} {scores[1]:>8.3f}{shipped}",
                  flush=True)


def network_features(model) -> list[tuple]:
    """[(feature extractor, logits W, logits b)] for each network of an average (or the one network)."""
    import keras

    networks = [layer for layer in model.layers if isinstance(layer, keras.Model)] or [model]
    return [(keras.Model(n.input, n.get_layer("fc_relu").output), *n.get_layer("logits").get_weights())
            for n in networks]


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def refit(x_fer, y_fer, x_photo, y_photo, w0, b0, photo_weight: float, balance: float, mu: float):
    """The last layer minimising weighted cross-entropy + mu/2 |W - W0|^2 (L-BFGS from the shipped weights)."""
    from scipy.optimize import minimize

    x, y = np.concatenate([x_fer, x_photo]), np.concatenate([y_fer, y_photo])
    counts = np.maximum(np.bincount(y_photo, minlength=w0.shape[1]), 1).astype(float)
    weights = np.concatenate([np.full(len(y_fer), (1 - photo_weight) / len(y_fer)), (counts.max() / counts)[y_photo] ** balance])
    weights[len(y_fer):] *= photo_weight / weights[len(y_fer):].sum()
    onehot, d = np.eye(w0.shape[1])[y], x.shape[1]

    def loss(theta):
        w, b = theta[:w0.size].reshape(w0.shape), theta[w0.size:]
        p = softmax(x @ w + b)
        gradient = (p - onehot) * weights[:, None]
        value = -(weights * np.log(np.maximum((p * onehot).sum(1), 1e-12))).sum() + mu / 2 * ((w - w0) ** 2).sum()
        return value, np.concatenate([(x.T @ gradient + mu * (w - w0)).ravel(), gradient.sum(0)])

    theta = minimize(loss, np.concatenate([w0.ravel(), b0]), jac=True, method="L-BFGS-B", options={"maxiter": 300}).x
    return theta[:w0.size].reshape(d, -1), theta[w0.size:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lever", choices=("crops", "neutral", "last-layer"))
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default="data/fer2013.npz", help="FER-2013 (Training fits, PublicTest is scored)")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "real_faces"))
    args = parser.parse_args()

    _, meta = load_model(args.models[0])
    photo_set = photos.read_photo_set(args.photos, list(meta.class_names))
    training_people, held_out = photo_set.split_by_identity()
    parts = {"training people": (training_people, largest_faces(training_people)),
             "held-out": (held_out, largest_faces(held_out))}
    if args.lever == "crops":
        return crops_table(args.models, parts)
    fer = data.load_fer2013(args.data, progress=False)
    train, public = fer.split("Training"), fer.split("PublicTest")
    held_found = np.array([f is not None for f in parts["held-out"][1]])
    for name in args.models:
        model, meta = load_model(name)
        shipped_crop = [(meta.face_margin, meta.face_offset, meta.face_align)]
        held = cut(*parts["held-out"], shipped_crop, meta.face_low_contrast)[0]
        if args.lever == "neutral":
            log_public = np.log(np.maximum(predict_probabilities(model, public.images), 1e-12))
            log_held = np.log(np.maximum(predict_probabilities(model, held), 1e-12))
            neutral = meta.class_names.index("neutral")
            for offset in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5):
                shift = np.eye(len(meta.class_names))[neutral] * offset
                score, recalls = macro(log_held + shift, held_out.labels, held_found)
                print(f"{name:<10} neutral +{offset:<5} PublicTest {((log_public + shift).argmax(1) == public.labels).mean():.4f}"
                      f"  held-out macro {score:.3f}  recalls {np.round(recalls, 2)}", flush=True)
            continue
        found = np.array([f is not None for f in parts["training people"][1]])
        photo_crops = cut(*parts["training people"], shipped_crop, meta.face_low_contrast)[0][found]
        y_photo = np.concatenate([training_people.labels[found]] * 2)
        features = []
        for extractor, w0, b0 in network_features(model):
            def f(images, extractor=extractor):
                return extractor.predict(to_model_input(np.ascontiguousarray(images)), batch_size=256, verbose=0)
            features.append((w0, b0, np.concatenate([f(train.images), f(train.images[:, :, ::-1])]),
                             np.concatenate([f(photo_crops), f(photo_crops[:, :, ::-1])]), f(public.images), f(held)))
        y_fer = np.concatenate([train.labels] * 2)
        for photo_weight, balance, mu in [(0.0, 0.0, 0.0)] + list(itertools.product((0.1, 0.3, 0.5), (0.5, 1.0), (1e-3, 1e-2))):
            heads = [(w0, b0) if photo_weight == 0 else refit(x_fer, y_fer, x_photo, y_photo, w0, b0, photo_weight, balance, mu)
                     for w0, b0, x_fer, x_photo, _, _ in features]
            p_public = np.mean([softmax(x @ w + b) for (w, b), (*_, x, _) in zip(heads, features)], 0)
            p_held = np.mean([softmax(x @ w + b) for (w, b), (*_, x) in zip(heads, features)], 0)
            score, recalls = macro(p_held, held_out.labels, held_found)
            label = "shipped" if photo_weight == 0 else f"W {photo_weight} B {balance} MU {mu}"
            print(f"{name:<10} {label:<22} PublicTest {(p_public.argmax(1) == public.labels).mean():.4f}"
                  f"  held-out macro {score:.3f}  recalls {np.round(recalls, 2)}", flush=True)


if __name__ == "__main__":
    main()
