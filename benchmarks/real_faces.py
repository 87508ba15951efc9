"""Score models on FER-2013's PublicTest and on the held-out people of a labelled photo set, side by side.

    python benchmarks/real_faces.py fer fer_lite checkpoints/levers/*/fer --data data/fer2013.npz
    python benchmarks/real_faces.py fer --photos ../shared/real_faces --prior-correction   # + tuned class offsets

One row per model: PublicTest accuracy (FER-2013's own crops, no TTA), and on
the held-out people of ``--photos`` (``train --photos``' validation part, the
same split) the whole pipeline's macro recall over the classes with 40 or more
photos, neutral recall and each of those classes' recall, then the command
that made the model (from its metadata). Choose on these; report PrivateTest
and other people once. ``--tta`` adds test-time augmentation; ``--prior-correction``
also shows each model with per-class logit offsets fitted to half of the
held-out people and scored on the other half (and the reverse), the honest
estimate of what a prior correction gives on people it was not fitted to.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from common import PHOTO_CROP_CACHE, ROOT  # first: puts this checkout's ferkit on sys.path
from ferkit import data, photos
from ferkit.evaluation import MIN_SUPPORT, class_recalls
from ferkit.inference import predict_probabilities
from ferkit.model import load_model


def fit_offsets(log_p: np.ndarray, labels: np.ndarray, classes: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Per-class additive offsets on log-probabilities that maximise macro recall (coordinate search)."""
    offsets = np.zeros(log_p.shape[1])
    grid = np.linspace(-3, 3, 61)
    for _ in range(rounds):
        for k in range(log_p.shape[1]):
            scores = []
            for value in grid:
                trial = offsets.copy()
                trial[k] = value
                scores.append(class_recalls((log_p + trial).argmax(1), labels, classes).mean())
            offsets[k] = grid[int(np.argmax(scores))]
    return offsets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default="data/fer2013.npz", help="FER-2013 (PublicTest is scored)")
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "real_faces"))
    parser.add_argument("--held-out", type=float, default=photos.HELD_OUT_FRACTION)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--prior-correction", action="store_true")
    args = parser.parse_args()

    public = data.load_fer2013(args.data, progress=False).split("PublicTest")
    header = f"{'model':<40} {'PublicTest':>10} {'macro':>6} {'neutral':>7}"
    printed_header = False
    for name in args.models:
        model, meta = load_model(name)
        photo_set = photos.read_photo_set(args.photos, list(meta.class_names))
        held = photo_set.split_by_identity(args.held_out)[1]
        crops = photos.crop_photos(held, meta, cache_dir=PHOTO_CROP_CACHE, progress=False)
        support = np.bincount(held.labels, minlength=len(meta.class_names))
        classes = np.flatnonzero(support >= MIN_SUPPORT)
        if not printed_header:
            print(header + "".join(f" {meta.class_names[k][:8]:>8}" for k in classes) + "  command")
            printed_header = True
        accuracy = (predict_probabilities(model, public.images, tta=args.tta).argmax(1) == public.labels).mean()
        probabilities = np.full((len(held), len(meta.class_names)), 1 / len(meta.class_names), np.float32)
        probabilities[crops.found] = predict_probabilities(model, crops.crops[crops.found], tta=args.tta)
        predicted = np.where(crops.found, probabilities.argmax(1), -1)
        per_class = class_recalls(predicted, held.labels, classes)
        neutral = per_class[list(classes).index(meta.class_names.index("neutral"))]
        command = meta.training.get("command", "")
        print(f"{name[-40:]:<40} {accuracy:>10.4f} {per_class.mean():>6.3f} {neutral:>7.3f}"
              + "".join(f" {r:>8.3f}" for r in per_class) + f"  {command}", flush=True)
        if args.prior_correction:
            log_p = np.log(np.maximum(probabilities, 1e-7))
            # Two halves of the people (a stable hash of the name): fit on one, score on the other.
            halves = np.array([hashlib.sha256(p.encode()).digest()[0] % 2 for p in held.identities])
            corrected = np.empty(len(held), int)
            for half in (0, 1):
                offsets = fit_offsets(log_p[halves != half], held.labels[halves != half], classes)
                corrected[halves == half] = (log_p[halves == half] + offsets).argmax(1)
            corrected = np.where(crops.found, corrected, -1)
            per_class = class_recalls(corrected, held.labels, classes)
            neutral = per_class[list(classes).index(meta.class_names.index("neutral"))]
            print(f"{'  + prior correction (cross-fitted)':<40} {'':>10} {per_class.mean():>6.3f} {neutral:>7.3f}"
                  + "".join(f" {r:>8.3f}" for r in per_class), flush=True)


if __name__ == "__main__":
    main()
