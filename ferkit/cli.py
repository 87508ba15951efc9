"""``python -m ferkit``: the command line. Each command's ``--help`` explains it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from ferkit import data

_DATA_HELP = (f"FER-2013 as the Kaggle msambare/fer2013 zip, its extracted folder, fer2013.csv "
              f"or a ferkit .npz; defaults to ${data.DATA_ENV}")


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _add_reading_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable images / malformed CSV rows and list them, instead of stopping")
    parser.add_argument("--resize", action="store_true",
                        help="resize images that are not 48x48 instead of reporting them as bad")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="fer", help="model stem or .json/.h5 path (default: fer, the shipped model)")
    parser.add_argument("--detector", default="yunet", choices=["yunet", "mtcnn", "haar"],
                        help="face detector (default: yunet; mtcnn is slower but finds rotated faces)")
    parser.add_argument("--tta", action="store_true", help="average each face with its mirror image")
    parser.add_argument("--out", default="results", help="folder for annotated output (default: results)")


def _add_subset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", help=f"a subset preset ({', '.join(data.SUBSETS)}) or comma-separated class names to keep")
    parser.add_argument("--merge", action="append", default=[], metavar="SOURCE=TARGET",
                        help="relabel SOURCE as TARGET, e.g. --merge disgust=angry (repeatable)")


def _load(args) -> data.FerDataset:
    return data.load_fer2013(args.input, resize=args.resize, on_error="skip" if args.skip_bad else "raise",
                             progress=not args.no_progress)


def _report_skipped(dataset: data.FerDataset, listing: Path | None = None, shown: int = 20) -> None:
    if not dataset.skipped:
        return
    print(f"skipped {len(dataset.skipped)} bad record(s):")
    for record in dataset.skipped[:shown]:
        print(f"  {record}")
    if listing is not None:
        listing.write_text("".join(f"{record}\n" for record in dataset.skipped))
        print(f"  (full list in {listing})")
    elif len(dataset.skipped) > shown:
        print(f"  ... and {len(dataset.skipped) - shown} more")


def cmd_convert(args) -> None:
    started = time.perf_counter()
    output = Path(args.output)
    if output.suffix.lower() not in (".csv", ".npz"):
        raise SystemExit(f"error: {output}: the output must end in .csv (challenge schema) or .npz (fast cache)")
    dataset = _load(args)
    if output.suffix.lower() == ".npz":
        data.write_npz(dataset, output)
    else:
        data.write_csv(dataset, output, progress=not args.no_progress)
    print(f"wrote {len(dataset)} rows to {output} in {time.perf_counter() - started:.1f} s")
    print(data.summary_table(dataset, stats=False))
    _report_skipped(dataset, output.with_name(output.name + ".skipped.txt"))


def cmd_info(args) -> None:
    dataset = _load(args)
    if args.classes or args.merge:
        dataset = _select(dataset, args)
        moved = {k: v for k, v in dataset.label_map.items() if k != v}
        print("classes: " + ", ".join(dataset.class_names) + (f"  (changed: {moved})" if moved else ""))
    print(f"{dataset.source}: {len(dataset)} images of {data.IMAGE_SIZE}x{data.IMAGE_SIZE}")
    print(data.summary_table(dataset))
    print("mean = brightness, contrast = pixel std, sharpness = Laplacian variance; "
          "a split far below the others in contrast or sharpness was filtered or blurred.")
    _report_skipped(dataset)


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def _predictor(args):
    from ferkit.prediction import Predictor

    return Predictor(args.model, detector=args.detector, tta=args.tta)


def _save_annotated(result, out: Path, stem: str) -> Path:
    import cv2

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_annotated.jpg"
    cv2.imwrite(str(path), result.annotate())
    return path


def cmd_predict(args) -> None:
    import json

    from ferkit.prediction import predict_folder, write_video_table

    target, out = Path(args.input), Path(args.out)
    predictor = _predictor(args)
    if target.is_dir():
        report = {}
        for path, result in predict_folder(predictor, target, out):
            if isinstance(result, str):
                print(f"skipped: {result}", file=sys.stderr)
                report[str(path)] = {"error": result}
            else:
                print(result.message)
                report[str(path)] = [f.as_dict() for f in result.faces]
        if args.json:
            print(json.dumps(report, indent=2))
        print(f"annotated images in {out}/")
    elif target.suffix.lower() in VIDEO_SUFFIXES:
        out.mkdir(parents=True, exist_ok=True)
        video_out = out / f"{target.stem}_annotated.mp4"
        table = predictor.predict_video(target, video_out, stride=args.stride, progress=not args.no_progress)
        csv_path = write_video_table(table, out / f"{target.stem}_faces.csv")
        ids = table["face_id"].nunique() if len(table) else 0
        print(f"{table.attrs['frames']} frames, {len(table)} face rows, {ids} tracked face(s)")
        print(f"wrote {video_out} and {csv_path}")
    else:
        result = predictor.predict(target)
        if args.json:
            print(json.dumps([f.as_dict() for f in result.faces], indent=2))
        else:
            print(result.message)
            if result.faces:
                print(result.table())
        print(f"wrote {_save_annotated(result, out, target.stem)}")


def cmd_demo(args) -> None:
    from ferkit.images import sample_image

    predictor = _predictor(args)
    result = predictor.predict(sample_image(), channel_order="bgr", name="sample (skimage.data.astronaut)")
    print(result.message)
    print(result.table())
    print(f"wrote {_save_annotated(result, Path(args.out), 'astronaut')}")


def _select(dataset: data.FerDataset, args) -> data.FerDataset:
    if not (args.classes or args.merge):
        return dataset
    bad = [pair for pair in args.merge if "=" not in pair]
    if bad:
        raise ValueError(f"--merge {bad[0]!r}: expected SOURCE=TARGET, e.g. --merge disgust=angry")
    merge = dict(pair.split("=", 1) for pair in args.merge)
    keep = args.classes if args.classes in data.SUBSETS or args.classes is None else args.classes.split(",")
    return data.select_classes(dataset, keep, merge)


def cmd_train(args) -> None:
    from ferkit import training

    dataset = _select(_load(args), args).limit(args.limit, args.seed)
    config = training.TrainConfig(
        architecture=args.architecture, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        class_weight=args.class_weight, precision=args.precision, threshold_accuracy=args.threshold_accuracy,
        threshold_val_accuracy=args.threshold_val_accuracy, early_stopping_patience=args.early_stopping,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, init_weights=args.init_weights,
        average_last=args.average_last, average_learning_rate=args.average_learning_rate,
        augmentation=training.Augmentation(shift=args.shift, erase_probability=args.erase_probability))
    if args.finetune_from:
        config = config.second_stage(args.finetune_from)
    # Options left unset keep the stage's own values; options given always win.
    given = lambda **options: {name: value for name, value in options.items() if value is not None}
    config = replace(config, **given(learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs),
                     augmentation=replace(config.augmentation,
                                          **given(rotation_degrees=args.rotation, zoom=args.zoom)))
    print(f"training {args.architecture} on {len(dataset.split('Training'))} images "
          f"({', '.join(dataset.class_names)}), validating on PublicTest; checkpoints in {args.checkpoint_dir}")
    command = "python -m ferkit " + shlex.join(args.argv)
    result = training.train(dataset, config, out=args.out, checkpoint_dir=args.checkpoint_dir,
                             verbose=2 if args.no_progress else "auto", provenance={"command": command.strip()})
    print(f"best PublicTest accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}"
          + (f"; ThresholdStop stopped at epoch {result.threshold_epoch}" if result.threshold_epoch else ""))
    if result.averaged:
        a = result.averaged
        print(f"weight average of epochs {a['epochs'][0]}-{a['epochs'][1]}: PublicTest accuracy "
              f"{a['public_test_accuracy']:.4f} against {a['best_epoch_public_test_accuracy']:.4f} for the best "
              f"epoch in float32; saved the {'average' if a['saved'] else 'best epoch'}")
    print("saved " + ", ".join(str(p) for p in result.files.values()))


def cmd_evaluate(args) -> None:
    from ferkit import evaluation, model as model_module, training

    model, meta = model_module.load_model(args.model)
    dataset = _load(args)
    metrics = evaluation.evaluate(model, meta, dataset, tta=not args.no_tta)
    histories = []
    for folder in args.checkpoint_dir or [training.DEFAULT_CHECKPOINT_DIR]:
        histories.append(training.read_history(Path(folder) / "history.csv"))
        if not histories[-1]:
            print(f"note: no {Path(folder) / 'history.csv'}, so no training curves from it")
    history = training.join_histories(histories)
    files = evaluation.write_results(metrics, history, args.results,
                                     extra={"model": str(args.model), "dataset": dataset.source,
                                            "training": meta.training})
    print(evaluation.format_metrics(metrics))
    print("wrote " + ", ".join(str(p) for p in files.values()))


def cmd_ensemble(args) -> None:
    from ferkit import evaluation, model as model_module, training

    averaged, meta = model_module.average_models(args.models)
    meta.training["command"] = "python -m ferkit " + shlex.join(args.argv)
    if args.data:
        public = evaluation.align_to_model(data.load_fer2013(args.data, progress=not args.no_progress), meta)
        public = public.split("PublicTest")
        members = model_module.networks_of(averaged, meta, args.out)
        for member, record in members:
            accuracy = (training.predict_probabilities(member, public.images).argmax(1) == public.labels).mean()
            print(f"{record['model']} ({record['architecture']}): PublicTest accuracy {accuracy:.4f}")
        accuracy = (training.predict_probabilities(averaged, public.images).argmax(1) == public.labels).mean()
        print(f"average of {len(members)}: PublicTest accuracy {accuracy:.4f}")
    files = model_module.save_model(averaged, args.out, meta)
    print("saved " + ", ".join(str(p) for p in files.values()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ferkit",
        description="Facial expression recognition on FER-2013: get and inspect the dataset, train and "
                    "evaluate a CNN, and classify the faces in your photos and videos.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n"
                "  python -m ferkit demo\n"
                "  python -m ferkit predict photo.jpg\n"
                "  python -m ferkit info ~/Downloads/fer2013.zip\n"
                "  python -m ferkit convert ~/Downloads/fer2013.zip data/fer2013.csv\n"
                f"  {data.DATA_ENV}=data/fer2013.csv python -m ferkit info --classes fer5"),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="write FER-2013 as the challenge CSV (emotion,pixels,Usage) or a .npz cache",
        description="Read FER-2013 from INPUT and write it to OUTPUT. A .csv output uses the original "
                    "challenge schema and label ids (0=angry 1=disgust 2=fear 3=happy 4=sad 5=surprise "
                    "6=neutral), interchangeable with Kaggle's fer2013.csv; a .npz output reloads fastest.")
    convert.add_argument("input", help=_DATA_HELP)
    convert.add_argument("output", help="where to write: a path ending in .csv or .npz, e.g. data/fer2013.csv")
    _add_reading_options(convert)
    convert.set_defaults(func=cmd_convert)

    info = commands.add_parser(
        "info", help="print counts per split and class, and image statistics per split",
        description="Print per-split, per-class counts and per-split image statistics (brightness, "
                    "contrast, sharpness), so a damaged or altered copy of the dataset is visible at a glance.")
    info.add_argument("input", nargs="?", help=_DATA_HELP)
    _add_subset_options(info)
    _add_reading_options(info)
    info.set_defaults(func=cmd_info)

    from ferkit.model import ARCHITECTURES, DEFAULT_ARCHITECTURE
    from ferkit.training import DEFAULT_CHECKPOINT_DIR, TrainConfig

    defaults = TrainConfig()
    train = commands.add_parser(
        "train", help="train a CNN on the Training split, select on PublicTest, save fer.json/fer.h5",
        formatter_class=_DefaultsHelpFormatter,
        description="Train on Training, validate on PublicTest every epoch, keep the best epoch, and save "
                    "OUT.json (architecture), OUT.h5 (weights), OUT.keras and OUT.meta.json (class names, "
                    "preprocessing). Checkpoints after every epoch: run the same command again after an "
                    "interruption and it resumes where it stopped.")
    train.add_argument("input", nargs="?", help=_DATA_HELP)
    train.add_argument("--architecture", default=DEFAULT_ARCHITECTURE, choices=sorted(ARCHITECTURES),
                       help="network to build (see ferkit.model)")
    train.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs over the Training split")
    train.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    second = defaults.second_stage("MODEL")

    def stage_defaults(first, second_value):
        return f"(default: {first:g}; {second_value:g} with --finetune-from)"

    train.add_argument("--learning-rate", type=float,
                       help="peak learning rate (SGD, Nesterov momentum, warm-up then cosine decay) "
                            + stage_defaults(defaults.learning_rate, second.learning_rate))
    train.add_argument("--warmup-epochs", type=int,
                       help="epochs of linear learning-rate warm-up before the cosine decay "
                            + stage_defaults(defaults.warmup_epochs, second.warmup_epochs))
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="decoupled weight decay")
    train.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                       help="share of each one-hot target spread over the other classes")
    train.add_argument("--rotation", type=float, metavar="DEGREES",
                       help="random rotation, drawn from [-DEGREES, DEGREES] "
                            + stage_defaults(defaults.augmentation.rotation_degrees,
                                             second.augmentation.rotation_degrees))
    train.add_argument("--zoom", type=float,
                       help="random scale, drawn from [1 - ZOOM, 1 + ZOOM] "
                            + stage_defaults(defaults.augmentation.zoom, second.augmentation.zoom))
    train.add_argument("--shift", type=float, default=defaults.augmentation.shift,
                       help="random shift per axis, as a fraction of the image size")
    train.add_argument("--erase-probability", type=float, default=defaults.augmentation.erase_probability,
                       help="chance that an image gets a random rectangle of noise (random erasing)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--init-weights", metavar="MODEL",
                       help="start from this saved model's weights (stem or .h5; same architecture and classes), "
                            "e.g. to fine-tune the shipped fer model")
    start.add_argument("--finetune-from", metavar="MODEL",
                       help="a further training stage, as the shipped model's CPU networks were trained: start from "
                            "MODEL (the previous stage's --out) with a lower learning rate and milder rotation "
                            "and zoom")
    train.add_argument("--average-last", type=int, default=defaults.average_last, metavar="N",
                       help="stochastic weight averaging: end the cosine decay N epochs early, hold the learning "
                            "rate at --average-learning-rate and average those N epochs' weights; the average "
                            "(BatchNorm statistics recomputed) is saved if it beats the best epoch on PublicTest")
    train.add_argument("--average-learning-rate", type=float, metavar="LR",
                       help="the constant learning rate while averaging (default: a quarter of the peak)")
    train.add_argument("--seed", type=int, default=defaults.seed,
                       help="seed for weights, shuffling and augmentation: a run with the same seed sees the same "
                            "augmented images in the same order, so give a further stage a new seed if it should "
                            "see fresh ones")
    train.add_argument("--threshold-accuracy", type=float, metavar="A",
                       help="ThresholdStop: stop once training accuracy >= A (with --threshold-val-accuracy)")
    train.add_argument("--threshold-val-accuracy", type=float, metavar="B",
                       help="ThresholdStop: ... and PublicTest accuracy >= B (the original notebook: 0.75, 0.71)")
    train.add_argument("--early-stopping", type=int, metavar="EPOCHS",
                       help="stop when PublicTest accuracy has not improved for EPOCHS epochs")
    train.add_argument("--class-weight", choices=["balanced"], help="weigh classes by inverse frequency")
    train.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="auto: bfloat16 on CPUs/GPUs with fast bf16, float16 on older GPUs, else float32")
    train.add_argument("--limit", type=int, metavar="N", help="use at most N random images per split (quick runs)")
    train.add_argument("--out", default="fer", help="model files stem: OUT.json, OUT.h5, ...")
    train.add_argument("--checkpoint-dir", default=DEFAULT_CHECKPOINT_DIR,
                       help="per-epoch checkpoints and history.csv; give each training stage its own")
    _add_subset_options(train)
    _add_reading_options(train)
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy on PublicTest and PrivateTest, per-class scores, confusion matrix",
        description="Evaluate a saved model on PublicTest and PrivateTest (with and without test-time "
                    "augmentation: flips and small shifts), print per-class precision/recall/F1 and write "
                    "RESULTS/metrics.json, confusion_matrix.png and training_curves.png.")
    evaluate.add_argument("input", nargs="?", help=_DATA_HELP)
    evaluate.add_argument("--model", default="fer", help="model stem or .json/.h5 path (default: fer)")
    evaluate.add_argument("--results", default="results", help="output folder (default: results)")
    evaluate.add_argument("--checkpoint-dir", action="append", metavar="DIR",
                          help=f"where training wrote history.csv, for the training curves (default: "
                               f"{DEFAULT_CHECKPOINT_DIR}); repeat it, in order, for a model trained in stages "
                               "(--finetune-from)")
    evaluate.add_argument("--no-tta", action="store_true", help="skip test-time augmentation")
    _add_reading_options(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    ensemble = commands.add_parser(
        "ensemble", help="average several saved models' probabilities into one model (fer.json + fer.h5)",
        description="Combine saved models into one Keras model whose output is the mean of theirs. Networks "
                    "of different architectures err on different faces, so the mean is more accurate than "
                    "the best of them; it costs the members' inference time together. The members must share "
                    "class names and input settings; an average given as a MODEL counts as its members, so "
                    "`ensemble fer NEW --out fer` adds NEW to the shipped average with equal weights. Choose "
                    "members on PublicTest (--data) and report PrivateTest with `evaluate`.",
        epilog="example:\n  python -m ferkit ensemble checkpoints/v6/fer checkpoints/vgg2/fer --out fer "
               "--data data/fer2013.zip",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ensemble.add_argument("models", nargs="+", metavar="MODEL", help="model stems or .json/.h5 paths, two or more networks in all")
    ensemble.add_argument("--out", default="fer", help="model files stem: OUT.json, OUT.h5, ... (default: fer)")
    ensemble.add_argument("--data", metavar="DATASET",
                          help="FER-2013 (zip, folder, fer2013.csv or .npz): also print each member's and the "
                               "average's PublicTest accuracy")
    ensemble.add_argument("--no-progress", action="store_true", help="no progress bar")
    ensemble.set_defaults(func=cmd_ensemble)

    predict = commands.add_parser(
        "predict", help="find and classify faces in an image, a folder of images or a video",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect every face, classify its expression with the model (default: the shipped "
                    "fer.json + fer.h5) and save annotated copies in --out. Images: JPEG, PNG, BMP, WebP; "
                    f"videos: {', '.join(VIDEO_SUFFIXES)} (annotated video + per-frame CSV table, faces "
                    "tracked across frames).",
        epilog="examples:\n  python -m ferkit predict photo.jpg\n  python -m ferkit predict photos/ --json\n"
               "  python -m ferkit predict clip.mp4 --stride 2")
    predict.add_argument("input", help="an image file, a folder of images, or a video file")
    _add_prediction_options(predict)
    predict.add_argument("--json", action="store_true", help="print the results as JSON")
    predict.add_argument("--stride", type=int, default=1, help="videos: analyse every N-th frame (default: 1)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)

    demo = commands.add_parser(
        "demo", help="annotate the built-in sample photo (no download)",
        description="Find and classify the face in the sample photo that ships with scikit-image "
                    "(skimage.data.astronaut), print the result and save the annotated image in --out.")
    _add_prediction_options(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's start-up chatter (oneDNN, CUDA probing) drowns the output; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded with a trained model
    try:
        args.func(args)
    except (data.DatasetError, ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
