"""``python -m ferkit``: the command line. Each command's ``--help`` explains it."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from ferkit import data, files, portable
from ferkit.faces import DETECTORS

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


def _note(message: str) -> None:
    """Messages and progress go to stderr, so stdout holds only results (for pipes and --json)."""
    print(message, file=sys.stderr)


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model stem or .json/.h5 path (default: $FERKIT_MODEL, else the shipped "
                                        "fer model, found from any folder)")


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    from ferkit.images import MAX_IMAGE_PIXELS

    _add_model_option(parser)
    parser.add_argument("--detector", default="yunet", choices=DETECTORS,
                        help="face detector (default: yunet; mtcnn is slower but finds rotated faces)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average each face over its mirror image and small shifts")
    parser.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                        help="turn each face so its eyes are level before classifying it "
                             "(default: the model's face_align setting)")
    parser.add_argument("--upscale-search", action=argparse.BooleanOptionalAction, default=True,
                        help="also search each photo at twice its size for small or blurred faces (default: on; "
                             "5x the detection time; video frames are searched once)")
    parser.add_argument("--out", default="annotated", help="folder for annotated copies (default: annotated)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that ferkit did not write (default: leave them and report)")
    parser.add_argument("--max-pixels", type=_limit, default=MAX_IMAGE_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels before decoding them, 'none' for no limit "
                             f"(default: {MAX_IMAGE_PIXELS})")


def _limit(text: str) -> int | None:
    """A positive whole number, or 'none' for no limit (0 is refused: it would silently mean either)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive whole number, or 'none' for no limit")
    return value


def _add_subset_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classes", help=f"a subset preset ({', '.join(data.SUBSETS)}) or comma-separated class names to keep")
    parser.add_argument("--merge", action="append", default=[], metavar="SOURCE=TARGET",
                        help="relabel SOURCE as TARGET, e.g. --merge disgust=angry (repeatable)")


def _load(args) -> data.FerDataset:
    return data.load_fer2013(args.input, resize=args.resize, on_error="skip" if args.skip_bad else "raise",
                             progress=not args.no_progress)


def _report_skipped(dataset: data.FerDataset, listing: Path | None = None, shown: int = 20) -> None:
    """List the records ``--skip-bad`` left out on stderr (and all of them in ``listing``, if given)."""
    if listing is not None and not dataset.skipped:
        listing.unlink(missing_ok=True)  # a list from an earlier run would describe other data
    if not dataset.skipped:
        return
    _note(f"skipped {len(dataset.skipped)} bad record(s):")
    for record in dataset.skipped[:shown]:
        _note(f"  {record}")
    if listing is not None:
        files.write_text(listing, "".join(f"{record}\n" for record in dataset.skipped))
        _note(f"  (full list in {listing})")
    elif len(dataset.skipped) > shown:
        _note(f"  ... and {len(dataset.skipped) - shown} more")


def cmd_convert(args) -> None:
    started = time.perf_counter()
    output = files.check_output_path(args.output, args.input)  # before anything is read or written
    if output.suffix.lower() not in (".csv", ".npz"):
        raise files.OutputError(f"{output}: the output must end in .csv (challenge schema) or .npz (fast cache)")
    dataset = _load(args)
    if output.suffix.lower() == ".npz":
        data.write_npz(dataset, output)
    else:
        data.write_csv(dataset, output, progress=not args.no_progress)
    _note(f"wrote {len(dataset)} rows to {output} in {time.perf_counter() - started:.1f} s")
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

    return Predictor(args.model, detector=args.detector, tta=args.tta, max_pixels=args.max_pixels,
                     align=args.align, upscale_search=args.upscale_search)


def _print_results(args, results, passed, class_names, single: bool = False) -> None:
    """Results on stdout in the chosen form: text lines, one JSON document, or CSV rows."""
    import json

    from ferkit.prediction import face_rows

    if args.json:
        print(json.dumps({"images": [r.as_dict() for r in results],
                          "skipped": [{"file": str(path), "error": why} for path, why in passed]}, indent=2))
    elif args.csv:
        sys.stdout.write(face_rows(results, class_names).to_csv(index=False, float_format="%.4f"))
    else:
        for result in results:
            print(result.message)
            if single and result.faces:
                print(result.table())


def cmd_predict(args) -> int:
    import json

    from ferkit.images import save_image
    from ferkit.prediction import annotated_path, predict_folder, write_video_table

    target, out = Path(args.input), Path(args.out)
    if not target.exists() and not target.is_symlink():
        raise FileNotFoundError(f"{target}: no such file or folder")
    ledger = files.OutputLedger(out, args.overwrite)  # refuses a file as --out before the model loads
    predictor = _predictor(args)
    if target.is_dir():
        results, passed = [], []
        for path, result in predict_folder(predictor, target, out, recursive=args.recursive,
                                           overwrite=args.overwrite, progress=not args.no_progress):
            if isinstance(result, str):
                _note(f"skipped: {result}" if str(path) in result else f"skipped: {path}: {result}")
                passed.append((path, result))
            else:
                results.append(result)
        _print_results(args, results, passed, predictor.class_names)
        _note(f"{len(results)} image(s) annotated in {out}/" + (f"; {len(passed)} file(s) skipped" if passed else ""))
        return 1 if passed else 0
    if target.suffix.lower() in VIDEO_SUFFIXES:
        video_out = ledger.claim(out / f"{target.stem}_annotated.mp4")
        csv_path = ledger.claim(out / f"{target.stem}_faces.csv")
        table = predictor.predict_video(target, video_out, stride=args.stride, progress=not args.no_progress,
                                        max_frames=args.max_frames)
        ledger.record(video_out)
        ledger.record(write_video_table(table, csv_path))
        ids = table["face_id"].nunique() if len(table) else 0
        summary = {"video": str(target), "frames": int(table.attrs["frames"]), "face_rows": len(table),
                   "tracked_faces": int(ids), "annotated": str(video_out), "csv": str(csv_path)}
        if args.json:
            print(json.dumps(summary, indent=2))
        elif args.csv:
            sys.stdout.write(csv_path.read_text())
        else:
            print(f"{summary['frames']} frames, {len(table)} face rows, {ids} tracked face(s)")
        _note(f"wrote {video_out} and {csv_path}")
        return 0
    annotated = files.check_output_path(ledger.claim(annotated_path(target, target.parent, out)), target)
    result = predictor.predict(target)
    result.annotated = ledger.record(save_image(annotated, result.annotate()))
    _print_results(args, [result], [], predictor.class_names, single=True)
    _note(f"wrote {result.annotated}")
    return 0


def cmd_demo(args) -> None:
    from ferkit.images import sample_image, save_image

    ledger = files.OutputLedger(args.out, args.overwrite)
    annotated = ledger.claim(Path(args.out) / "astronaut_annotated.jpg")
    predictor = _predictor(args)
    result = predictor.predict(sample_image(), channel_order="bgr", name="sample (skimage.data.astronaut)")
    print(result.message)
    print(result.table())
    _note(f"wrote {ledger.record(save_image(annotated, result.annotate()))}")


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
    from ferkit import photos, training

    if args.member is not None and not (args.init_weights or args.finetune_from):
        raise ValueError("--member N picks a network of the model given to --init-weights or --finetune-from; "
                         "give one of those too")
    dataset = _select(_load(args), args).limit(args.limit, args.seed)
    config = training.TrainConfig(
        architecture=args.architecture, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
        class_weight=args.class_weight, precision=args.precision, threshold_accuracy=args.threshold_accuracy,
        threshold_val_accuracy=args.threshold_val_accuracy, early_stopping_patience=args.early_stopping,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, init_weights=args.init_weights,
        init_member=args.member,
        average_last=args.average_last, average_learning_rate=args.average_learning_rate,
        teacher=args.teacher, teacher_weight=args.teacher_weight,
        photos=args.photos, photos_weight=args.photos_weight, photos_held_out=args.photos_held_out,
        photos_labels=photos.parse_label_map(args.photos_labels), epoch_size=args.epoch_size,
        photos_balance=args.photos_balance,
        augmentation=training.Augmentation(shift=args.shift, erase_probability=args.erase_probability,
                                           blur_probability=args.blur_probability,
                                           jpeg_probability=args.jpeg_probability))
    if args.finetune_from:
        config = config.second_stage(args.finetune_from)
    # Options left unset keep the stage's own values; options given always win.
    given = lambda **options: {name: value for name, value in options.items() if value is not None}
    config = replace(config, **given(learning_rate=args.learning_rate, warmup_epochs=args.warmup_epochs),
                     augmentation=replace(config.augmentation,
                                          **given(rotation_degrees=args.rotation, zoom=args.zoom)))
    print(f"training {args.architecture} on {len(dataset.split('Training'))} images "
          + (f"towards {args.teacher}'s probabilities (weight {args.teacher_weight}) " if args.teacher else "")
          + f"({', '.join(dataset.class_names)}), validating on PublicTest; checkpoints in {args.checkpoint_dir}")
    command = "python -m ferkit " + shlex.join(args.argv)
    result = training.train(dataset, config, out=args.out, checkpoint_dir=args.checkpoint_dir,
                             verbose=2 if args.no_progress else "auto", provenance={"command": command.strip()})
    best = result.history[result.best_epoch - 1] if 0 < result.best_epoch <= len(result.history) else {}
    photos = (f" and held-out photos' macro recall {best['val_photos_macro_recall']:.4f} (chosen on their mean)"
              if "val_photos_macro_recall" in best else "")
    print(f"best epoch {result.best_epoch}: PublicTest accuracy {result.best_val_accuracy:.4f}{photos}"
          + (f"; ThresholdStop stopped at epoch {result.threshold_epoch}" if result.threshold_epoch else ""))
    if result.averaged:
        a = result.averaged
        print(f"weight average of epochs {a['epochs'][0]}-{a['epochs'][1]}: PublicTest accuracy "
              f"{a['public_test_accuracy']:.4f} against {a['best_epoch_public_test_accuracy']:.4f} for the best "
              f"epoch in float32; saved the {'average' if a['saved'] else 'best epoch'}")
    print("saved " + ", ".join(str(p) for p in result.files.values()))


def cmd_evaluate_photos(args, model, meta) -> None:
    from ferkit import evaluation, photos
    from ferkit.model import resolve_model

    photo_set = photos.read_photo_set(args.input, meta.class_names, photos.parse_label_map(args.labels))
    if args.held_out is not None:
        photo_set = photo_set.split_by_identity(args.held_out)[1]
    crops = photos.crop_photos(photo_set, meta, args.detector, progress=not args.no_progress)
    for index, why in sorted(crops.errors.items()):
        _note(f"unreadable, counted as no face: {why}")
    metrics, table = evaluation.evaluate_photos(model, meta, photo_set, crops, args.min_support, args.tta,
                                                args.resamples)
    metrics["model"] = args.model or resolve_model().name  # as given, not a path on this machine
    results = Path(args.results or Path("results") / "photos" / Path(args.input).resolve().name)
    written = evaluation.write_photo_results(metrics, table, results)
    print(evaluation.format_photo_metrics(metrics))
    _note("wrote " + ", ".join(str(p) for p in written.values()))


def cmd_evaluate(args) -> None:
    from ferkit import evaluation, model as model_module, photos, training

    model, meta = model_module.load_model(args.model)
    if args.input and photos.is_photo_set(args.input):
        return cmd_evaluate_photos(args, model, meta)
    if args.labels or args.held_out is not None:
        raise ValueError(f"{args.input or 'the dataset'}: --labels and --held-out are for labelled photo sets "
                         "(class folders or a labels.csv), not FER-2013")
    dataset = _load(args)
    if args.pipeline:
        from ferkit import fidelity

        split = dataset.split(args.pipeline)
        print(f"{args.pipeline}: {len(split)} faces placed into 640x480 frames, detector {args.detector}; "
              f"crop margin {meta.face_margin}, offset {meta.face_offset}, align {meta.face_align}, "
              f"low-contrast lift {meta.face_low_contrast or 'off'}", file=sys.stderr)
        print(fidelity.TABLE_HEADER)
        for row in fidelity.table_rows(model, meta, split.images, split.labels, args.detector):
            print(row, flush=True)
        return
    metrics = evaluation.evaluate(model, meta, dataset, tta=not args.no_tta)
    histories = []
    for folder in args.checkpoint_dir or [training.DEFAULT_CHECKPOINT_DIR]:
        histories.append(training.read_history(Path(folder) / "history.csv"))
        if not histories[-1]:
            print(f"note: no {Path(folder) / 'history.csv'}, so no training curves from it")
    history = training.join_histories(histories)
    files = evaluation.write_results(metrics, history, args.results or "results",
                                     extra={"model": str(args.model), "dataset": dataset.source,
                                            "training": meta.training})
    print(evaluation.format_metrics(metrics))
    print("wrote " + ", ".join(str(p) for p in files.values()))


def _print_public_test_accuracy(args, meta, networks: list) -> None:
    """Print each ``(label, keras_model)``'s PublicTest accuracy on ``args.data``, if given."""
    from ferkit import evaluation, model as model_module

    if not args.data:
        return
    public = evaluation.align_to_model(data.load_fer2013(args.data, progress=not args.no_progress), meta)
    public = public.split("PublicTest")
    for label, network in networks:
        accuracy = (model_module.predict_probabilities(network, public.images).argmax(1) == public.labels).mean()
        print(f"{label}: PublicTest accuracy {accuracy:.4f}")


def cmd_ensemble(args) -> None:
    from ferkit import model as model_module

    averaged, meta = model_module.average_models(args.models)
    meta.training["command"] = "python -m ferkit " + shlex.join(args.argv)
    members = model_module.networks_of(averaged, meta, args.out)
    _print_public_test_accuracy(args, meta, [(f"{record['model']} ({record['architecture']})", member)
                                             for member, record in members]
                                + [(f"average of {len(members)}", averaged)])
    files = model_module.save_model(averaged, args.out, meta)
    print("saved " + ", ".join(str(p) for p in files.values()))


def cmd_interpolate(args) -> None:
    from ferkit import model as model_module, training

    blend = training.interpolate_weights(args.finetuned, args.start, args.alpha, args.member)
    blend.meta.training["command"] = "python -m ferkit " + shlex.join(args.argv)
    _print_public_test_accuracy(args, blend.meta, [
        (f"start, {args.start}" + (f" member {args.member}" if args.member else ""), blend.start),
        (f"fine-tuned, {args.finetuned}", blend.finetuned),
        (f"blend, alpha {args.alpha:g}", blend.model)])
    files = model_module.save_model(blend.model, args.out, blend.meta)
    print("saved " + ", ".join(str(p) for p in files.values()))


def cmd_export(args) -> None:
    from ferkit.export import export_onnx

    print(export_onnx(args.model, args.out))


def cmd_serve(args) -> None:
    from ferkit.server import serve

    serve(args.host, args.port, args.model, open_browser=not args.no_browser,
          max_upload_bytes=int(args.max_upload_mib * 2**20), max_waiting_jobs=args.max_waiting_jobs,
          max_work_bytes=int(args.max_disk_gib * 2**30), job_ttl_seconds=args.job_ttl_minutes * 60)


def cmd_export_web(args) -> None:
    from ferkit.server import write_static_site

    folder = write_static_site(args.folder, args.model)
    _note(f"wrote the static site to {folder}/; try: python -m http.server -d {folder}")


def _add_train_options(train, architecture: str, out: str, checkpoint_dir: str, label_smoothing: float) -> None:
    """The options train and distill share; the defaults that differ between them are parameters."""
    from ferkit.model import ARCHITECTURES
    from ferkit.training import TrainConfig

    defaults = TrainConfig()
    train.add_argument("input", nargs="?", help=_DATA_HELP)
    train.add_argument("--architecture", default=architecture, choices=sorted(ARCHITECTURES),
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
    train.add_argument("--label-smoothing", type=float, default=label_smoothing,
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
    blur, jpeg = defaults.augmentation.blur_sigma, defaults.augmentation.jpeg_quality
    train.add_argument("--blur-probability", type=float, default=defaults.augmentation.blur_probability,
                       metavar="P", help=f"chance that an image is blurred (Gaussian, sigma {blur[0]:g}-{blur[1]:g} "
                                         "pixels), as faces cropped from soft photos and small faces are")
    train.add_argument("--jpeg-probability", type=float, default=defaults.augmentation.jpeg_probability,
                       metavar="P", help=f"chance that an image is re-encoded as JPEG (quality {jpeg[0]}-{jpeg[1]})")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--init-weights", metavar="MODEL",
                       help="start from this saved model's weights (stem or .h5; same architecture and classes), "
                            "e.g. to fine-tune the shipped fer model")
    start.add_argument("--finetune-from", metavar="MODEL",
                       help="a further training stage, as the shipped model's CPU networks were trained: start from "
                            "MODEL (the previous stage's --out) with a lower learning rate and milder rotation "
                            "and zoom")
    train.add_argument("--member", type=int, metavar="N",
                       help="with --init-weights/--finetune-from an average such as fer: start from its N-th "
                            "network, counted from 1 (default: the first of --architecture)")
    train.add_argument("--photos", action="append", default=[], metavar="PHOTOS",
                       help="also train on labelled photos (class folders or a labels.csv; repeatable): faces found "
                            "and cut once as the pipeline cuts them; FRACTION of each class's people held out "
                            "(--photos-held-out) and the best epoch chosen on PublicTest and their macro recall")
    train.add_argument("--photos-weight", action="append", type=float, default=[], metavar="W",
                       help="share of each epoch drawn from the matching --photos set (default: 0.3 split among "
                            "the sets)")
    train.add_argument("--photos-held-out", type=float, default=defaults.photos_held_out, metavar="FRACTION",
                       help="share of each class's photos held out, by person, for validation")
    train.add_argument("--photos-labels", action="append", metavar="THEIRS=OURS,...",
                       help="map the photo sets' label names to the classes, e.g. happiness=happy")
    train.add_argument("--photos-balance", type=float, default=defaults.photos_balance, metavar="B",
                       help="even out the photos' classes: a class of n photos is drawn in proportion to "
                            "n ** (1 - B); 0 keeps their mix, 1 draws every class alike")
    train.add_argument("--epoch-size", type=int, metavar="N",
                       help="with --photos: images drawn per epoch (default: the Training split's size)")
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
    train.add_argument("--out", default=out, help="model files stem: OUT.json, OUT.h5, ...")
    train.add_argument("--checkpoint-dir", default=checkpoint_dir,
                       help="per-epoch checkpoints and history.csv; give each training stage its own")
    _add_subset_options(train)
    _add_reading_options(train)


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
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up logs")
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

    from ferkit.model import DEFAULT_ARCHITECTURE
    from ferkit.training import DEFAULT_CHECKPOINT_DIR, TrainConfig

    defaults = TrainConfig()
    train = commands.add_parser(
        "train", help="train a CNN on the Training split, select on PublicTest, save fer.json/fer.h5",
        formatter_class=_DefaultsHelpFormatter,
        description="Train on Training, validate on PublicTest every epoch, keep the best epoch, and save "
                    "OUT.json (architecture), OUT.h5 (weights), OUT.keras and OUT.meta.json (class names, "
                    "preprocessing). Checkpoints after every epoch: run the same command again after an "
                    "interruption and it resumes where it stopped.")
    _add_train_options(train, DEFAULT_ARCHITECTURE, "fer", DEFAULT_CHECKPOINT_DIR, defaults.label_smoothing)
    train.add_argument("--teacher", metavar="MODEL",
                       help="distil: train towards MODEL's probabilities mixed with the labels (see distill)")
    train.set_defaults(func=cmd_train, teacher_weight=defaults.teacher_weight)

    distill = commands.add_parser(
        "distill", help="train a compact network (fer_lite) towards the shipped average's probabilities",
        formatter_class=_DefaultsHelpFormatter,
        description="Knowledge distillation: train a small network on the Training images towards the "
                    "teacher's probabilities (each image and its mirror, computed once and cached in the "
                    "checkpoint folder), mixed with the true labels by --teacher-weight; select on PublicTest "
                    "and save OUT.json/.h5/.keras/.meta.json, loadable like fer (--model fer_lite). Resumes "
                    "when run again, like train.")
    _add_train_options(distill, "lite", "fer_lite", "checkpoints/fer_lite", 0.0)
    distill.add_argument("--teacher", default="fer", metavar="MODEL", help="the model to learn from")
    distill.add_argument("--teacher-weight", type=float, default=defaults.teacher_weight, metavar="W",
                         help="targets: W x teacher probabilities + (1 - W) x one-hot label")
    distill.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="accuracy on FER-2013's test splits, or on your own labelled photos",
        description="FER-2013: evaluate a saved model on PublicTest and PrivateTest (with and without test-time "
                    "augmentation: flips and small shifts), print per-class precision/recall/F1 and write "
                    "RESULTS/metrics.json, confusion_matrix.png and training_curves.png. Labelled photos (a folder "
                    "of class folders, or a labels.csv with file and label columns and optionally identity): the "
                    "whole pipeline (find the face, crop, classify), per-class recall, macro recall, accuracy, "
                    "faces found, 95%% intervals resampling people, a confusion matrix and a per-photo CSV.")
    evaluate.add_argument("input", nargs="?", help=_DATA_HELP + "; or labelled photos (class folders or labels.csv)")
    _add_model_option(evaluate)
    evaluate.add_argument("--results", help="output folder (default: results, or results/photos/NAME for photos)")
    evaluate.add_argument("--labels", action="append", metavar="THEIRS=OURS,...",
                          help="photos: map the set's label names to the model's, e.g. happiness=happy,anger=angry; "
                               "labels that map to no class are listed and left out")
    evaluate.add_argument("--held-out", type=float, nargs="?", const=0.25, metavar="FRACTION",
                          help="photos: evaluate only the people `train --photos` holds out for validation "
                               "(FRACTION of each class, by person; default 0.25)")
    evaluate.add_argument("--min-support", type=int, default=40, metavar="N",
                          help="photos: classes with fewer than N photos are shown but left out of the macro recall "
                               "(default: 40)")
    evaluate.add_argument("--resamples", type=int, default=1000, metavar="N",
                          help="photos: resamplings of people for the 95%% intervals (default: 1000; 0: none)")
    evaluate.add_argument("--tta", action="store_true", help="photos: test-time augmentation, as predict --tta")
    evaluate.add_argument("--checkpoint-dir", action="append", metavar="DIR",
                          help=f"where training wrote history.csv, for the training curves (default: "
                               f"{DEFAULT_CHECKPOINT_DIR}); repeat it, in order, for a model trained in stages "
                               "(--finetune-from)")
    evaluate.add_argument("--no-tta", action="store_true", help="skip test-time augmentation")
    evaluate.add_argument("--pipeline", choices=["PublicTest", "PrivateTest"], metavar="SPLIT",
                          help="instead: accuracy through detect -> crop -> classify with the split's faces "
                               "placed into larger frames, per condition, beside direct classification "
                               "(ferkit.fidelity; PublicTest to tune, PrivateTest to report)")
    evaluate.add_argument("--detector", default="yunet", choices=DETECTORS,
                          help="face detector for --pipeline and photos (default: yunet)")
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

    interpolate = commands.add_parser(
        "interpolate", help="blend a fine-tuned network's weights with those of the network it started from",
        description="Write the network whose weights lie ALPHA of the way from START's to FINETUNED's "
                    "(WiSE-FT). A network fine-tuned for photos (docs/experiments/pipeline-training.md) "
                    "often loses a little on FER-2013's own crops; a blend can keep the gain and the "
                    "accuracy. Only for a network and one fine-tuned from it. Choose ALPHA on PublicTest "
                    "(--data, or benchmarks/choose_members.py for the photo pipeline).",
        epilog="example:\n  python -m ferkit interpolate checkpoints/pipe1/fer fer --member 1 --alpha 0.5 "
               "--out checkpoints/blend1/fer --data data/fer2013.zip",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    interpolate.add_argument("finetuned", metavar="FINETUNED", help="the fine-tuned network (stem or .json/.h5)")
    interpolate.add_argument("start", metavar="START", help="the network it was fine-tuned from, or an average "
                                                            "holding it (see --member)")
    interpolate.add_argument("--member", type=int, metavar="N",
                             help="START is an average: blend with its network N (counted from 1; default the "
                                  "first of FINETUNED's architecture)")
    interpolate.add_argument("--alpha", type=float, default=0.5,
                             help="0 gives START, 1 FINETUNED (default 0.5)")
    interpolate.add_argument("--out", required=True, help="model files stem: OUT.json, OUT.h5, ...")
    interpolate.add_argument("--data", metavar="DATASET",
                             help="FER-2013: also print START's, FINETUNED's and the blend's PublicTest accuracy")
    interpolate.add_argument("--no-progress", action="store_true", help="no progress bar")
    interpolate.set_defaults(func=cmd_interpolate)

    export = commands.add_parser(
        "export", help="write a model as ONNX (MODEL.onnx beside MODEL.meta.json) for browsers and other runtimes",
        description="Translate a saved model's layers into one ONNX graph (BatchNorm folded into the layer before "
                    "it; an average becomes a Mean over its members). Input 'face' (N, 48, 48, 1) float32 pixels "
                    "0-255, output 'probabilities' (N, classes), as in Keras; class names and crop settings stay "
                    "in MODEL.meta.json.")
    export.add_argument("model", nargs="?", help="model stem or .json/.h5 path (default: $FERKIT_MODEL, else fer)")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    export.add_argument("--out", help="output file (default: MODEL.onnx beside the model; for a shipped model, in the "
                                        "working folder)")
    export.set_defaults(func=cmd_export)

    serve = commands.add_parser(
        "serve", help="the web page: live webcam, photos and videos in the browser, the model running in the page",
        description="Start a local web app and open it in the browser. Live and Photo views run face detection and "
                    "classification in the page (ONNX Runtime Web): no frame leaves the browser. The Video view "
                    "uploads a video to this server, which annotates it with ferkit's video pipeline.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                                                          "only; 0.0.0.0 opens it to the network, with a warning)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--model", action="append", metavar="MODEL",
                       help="a model to offer (repeatable; default: fer, and fer_lite where it exists)")
    serve.add_argument("--no-browser", action="store_true", help="do not open a browser")
    from ferkit import server

    limits = serve.add_argument_group("limits of the Video view (docs/web-app.md, \"Threat model\")")
    limits.add_argument("--max-upload-mib", type=float, default=server.MAX_UPLOAD_BYTES / 2**20, metavar="MIB",
                        help="largest video accepted (default: %(default)g)")
    limits.add_argument("--max-waiting-jobs", type=int, default=server.MAX_WAITING_JOBS, metavar="N",
                        help="videos that may wait behind the one being annotated; more get 429 (default: %(default)s)")
    limits.add_argument("--max-disk-gib", type=float, default=server.MAX_WORK_BYTES / 2**30, metavar="GIB",
                        help="disk the uploads and results may take together (default: %(default)g)")
    limits.add_argument("--job-ttl-minutes", type=float, default=server.JOB_TTL_SECONDS / 60, metavar="MIN",
                        help="finished videos and their results are removed after this long (default: %(default)g)")
    serve.set_defaults(func=cmd_serve)

    export_web = commands.add_parser(
        "export-web", help="write the page with its models as a static site (Live and Photo views)",
        description="Write a self-contained folder (HTML, JavaScript, WASM, models) that works from any static host, "
                    "e.g. `python -m http.server -d DIR`. Without cross-origin isolation headers the page runs "
                    "ONNX Runtime on one thread.")
    export_web.add_argument("folder", help="a new or empty folder")
    export_web.add_argument("--model", action="append", metavar="MODEL", help="a model to include (repeatable)")
    export_web.set_defaults(func=cmd_export_web)

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
    output_format = predict.add_mutually_exclusive_group()
    output_format.add_argument("--json", action="store_true",
                               help="print the results as one JSON document on stdout (messages go to stderr)")
    output_format.add_argument("--csv", action="store_true",
                               help="print one CSV row per face on stdout: file, face, x, y, width, height, detection_score, "
                                    "label, score, p_<class>... (an image without faces: one row, face empty)")
    predict.add_argument("--recursive", action="store_true", help="folders: also the images in subfolders")
    predict.add_argument("--stride", type=int, default=1, help="videos: analyse every N-th frame (default: 1)")
    from ferkit.prediction import MAX_VIDEO_FRAMES

    predict.add_argument("--max-frames", type=_limit, default=MAX_VIDEO_FRAMES, metavar="N",
                         help=f"videos: refuse more than N frames, 'none' for no limit (default: {MAX_VIDEO_FRAMES}, "
                              "an hour at 30 fps)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)

    demo = commands.add_parser(
        "demo", help="annotate the built-in sample photo (no download)",
        description="Find and classify the face in the sample photo that ships with scikit-image "
                    "(skimage.data.astronaut), print the result and save the annotated image in --out.")
    _add_prediction_options(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _plain_warnings() -> None:
    """ferkit's own warnings (a .jpg holding PNG data) as one "warning: ..." line each, every time."""
    import warnings

    from ferkit.images import ImageWarning

    warnings.simplefilter("always", ImageWarning)
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ImageWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


_TENSORFLOW_COMMANDS = ("train", "distill", "evaluate", "ensemble", "interpolate", "predict", "demo", "export", "serve",
                       "export-web")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status: 0 done, 1 done but some inputs were skipped, 2 failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[portable.VERBOSE_ENV] = "1"
    if args.command in _TENSORFLOW_COMMANDS:
        portable.import_keras()
    args.argv = [a for a in argv if a != "--verbose"]  # recorded with a trained model
    _plain_warnings()
    try:
        status = args.func(args)
    except (data.DatasetError, ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return status or 0
