"""What each ``python -m ferkit`` command does, once :mod:`ferkit.cli` has parsed its options.

Each ``cmd_*`` takes the parsed arguments and returns the exit status (None for 0). Results go to stdout,
messages and progress to stderr (:func:`_note`), so stdout can be piped or read as JSON or CSV.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

from ferkit import data, evaluation, fidelity, files, photos, quantize, server
from ferkit.batch import predict_path
from ferkit.export import export_onnx
from ferkit.finetune import interpolate_weights
from ferkit.history import DEFAULT_CHECKPOINT_DIR, stage_histories
from ferkit.images import sample_image, save_image
from ferkit.inference import predict_probabilities
from ferkit.model import average_models, load_model, networks_of, resolve_model, save_model
from ferkit.options import with_options
from ferkit.prediction import Predictor, face_rows
from ferkit.settings import IMAGE_SIZE
from ferkit.training import TrainConfig, train


def _note(message: str) -> None:
    """Messages and progress go to stderr, so stdout holds only results (for pipes and --json)."""
    print(message, file=sys.stderr)


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
    print(f"{dataset.source}: {len(dataset)} images of {IMAGE_SIZE}x{IMAGE_SIZE}")
    print(data.summary_table(dataset))
    print("mean = brightness, contrast = pixel std, sharpness = Laplacian variance; "
          "a split far below the others in contrast or sharpness was filtered or blurred.")
    _report_skipped(dataset)


def _predictor(args) -> Predictor:
    return Predictor(args.model, detector=args.detector, tta=args.tta, max_pixels=args.max_pixels,
                     align=args.align, upscale_search=args.upscale_search)


def _print_results(args, results, passed, class_names, single: bool = False) -> None:
    """Results on stdout in the chosen form: text lines, one JSON document, or CSV rows."""
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


def _note_skipped(path: Path, why: str) -> None:
    _note(f"skipped: {why}" if str(path) in why else f"skipped: {path}: {why}")


def cmd_predict(args) -> int:
    outcome = predict_path(lambda: _predictor(args), args.input, args.out, recursive=args.recursive,
                           overwrite=args.overwrite, stride=args.stride, max_frames=args.max_frames,
                           progress=not args.no_progress, on_skip=_note_skipped)
    if outcome.kind == "video":
        summary = outcome.summary
        if args.json:
            print(json.dumps(summary, indent=2))
        elif args.csv:
            sys.stdout.write(Path(summary["csv"]).read_text())
        else:
            print(f"{summary['frames']} frames, {summary['face_rows']} face rows, "
                  f"{summary['tracked_faces']} tracked face(s)")
        _note(f"wrote {summary['annotated']} and {summary['csv']}")
        return outcome.exit_status
    _print_results(args, outcome.results, outcome.skipped, outcome.class_names, single=outcome.kind == "image")
    if outcome.kind == "folder":
        _note(f"{len(outcome.results)} image(s) annotated in {Path(args.out)}/"
              + (f"; {len(outcome.skipped)} file(s) skipped" if outcome.skipped else ""))
    else:
        _note(f"wrote {outcome.written[0]}")
    return outcome.exit_status


def cmd_demo(args) -> None:
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
    config = _train_config(args)
    if config.init_member is not None and not config.init_weights:
        raise ValueError("--member N picks a network of the model given to --init-weights or --finetune-from; "
                         "give one of those too")
    dataset = _select(_load(args), args).limit(args.limit, config.seed)
    print(f"training {config.architecture} on {len(dataset.split('Training'))} images "
          + (f"towards {config.teacher}'s probabilities (weight {config.teacher_weight}) " if config.teacher else "")
          + f"({', '.join(dataset.class_names)}), validating on PublicTest; checkpoints in {args.checkpoint_dir}")
    command = "python -m ferkit " + shlex.join(args.argv)
    result = train(dataset, config, out=args.out, checkpoint_dir=args.checkpoint_dir,
                   verbose=2 if args.no_progress else "auto", provenance={"command": command.strip()})
    best = result.history[result.best_epoch - 1] if 0 < result.best_epoch <= len(result.history) else {}
    photo_score = (f" and held-out photos' macro recall {best['val_photos_macro_recall']:.4f} (chosen on their mean)"
                   if "val_photos_macro_recall" in best else "")
    print(f"best epoch {result.best_epoch}: PublicTest accuracy {result.best_val_accuracy:.4f}{photo_score}"
          + (f"; ThresholdStop stopped at epoch {result.threshold_epoch}" if result.threshold_epoch else ""))
    if result.averaged:
        a = result.averaged
        print(f"weight average of epochs {a['epochs'][0]}-{a['epochs'][1]}: PublicTest accuracy "
              f"{a['public_test_accuracy']:.4f} against {a['best_epoch_public_test_accuracy']:.4f} for the best "
              f"epoch in float32; saved the {'average' if a['saved'] else 'best epoch'}")
    print("saved " + ", ".join(str(p) for p in result.files.values()))


def _photo_set_name(path: str) -> str:
    """What to call a photo set's results folder: its folder's name (a labels.csv is named by its folder)."""
    path = Path(path).resolve()
    if path.is_file():
        return path.parent.name if path.name.lower() == "labels.csv" else f"{path.parent.name}-{path.stem}"
    return path.name


#: ``evaluate --held-out`` with no fraction: the one the model was trained with (not a string, which argparse
#: would pass through ``type``).
HELD_OUT_AS_TRAINED = -1.0


def _held_out_fraction(given: float, photo_set: str, meta) -> float:
    """``evaluate --held-out``'s fraction: as given, or (no value) the one the model was trained with on this
    set, so the held-out people are the ones it never saw; a model that held none of them out is named."""
    trained = [entry for entry in (meta.training or {}).get("photos", [])
               if entry.get("path") and _photo_set_name(entry["path"]) == _photo_set_name(photo_set)]
    recorded = trained[0].get("held_out_fraction") if trained else None
    if recorded == 0:
        _note(f"note: the model trained on every photo of {photo_set} (--photos-held-out 0); the held-out "
              "part was seen in training")
    if given != HELD_OUT_AS_TRAINED:
        if recorded and given != recorded:
            _note(f"note: the model held out {recorded:g} of {photo_set} in training, not {given:g}; "
                  "some of these photos were seen in training")
        return given
    return recorded or photos.HELD_OUT_FRACTION


def cmd_evaluate_photos(args, model, meta) -> None:
    if args.resamples < 0:
        raise ValueError(f"--resamples {args.resamples}: give 0 (no intervals) or more")
    photo_set = photos.read_photo_set(args.input, meta.class_names, photos.parse_label_map(args.labels),
                                      skip_bad=args.skip_bad)
    for why in photo_set.skipped:
        _note(f"skipped: {why}")
    if args.held_out is not None:
        photo_set = photo_set.split_by_identity(_held_out_fraction(args.held_out, args.input, meta))[1]
        if not len(photo_set):
            raise ValueError(f"{args.input}: the held-out part is empty (too few people to hold any out); "
                             "evaluate without --held-out")
    crops = photos.crop_photos(photo_set, meta, args.detector, progress=not args.no_progress,
                               whole_image=args.crops, max_pixels=args.max_pixels)
    for index, why in sorted(crops.errors.items()):
        _note(f"skipped: {why}" if args.skip_bad
              else f"unreadable, counted as no face (--skip-bad leaves it out): {why}")
    if args.skip_bad and crops.errors:
        readable = [index not in crops.errors for index in range(len(photo_set))]
        photo_set, crops = photo_set.subset(readable), crops.subset(readable)
        if not len(photo_set):
            raise ValueError(f"{args.input}: no readable photo left to evaluate")
    metrics, table = evaluation.evaluate_photos(model, meta, photo_set, crops, args.min_support, args.tta,
                                                args.resamples)
    metrics["face_crops"] = args.crops
    metrics["model"] = args.model or resolve_model().name  # as given, not a path on this machine
    results = Path(args.results or Path("results") / "photos" / _photo_set_name(args.input))
    written = evaluation.write_photo_results(metrics, table, results)
    print(evaluation.format_photo_metrics(metrics))
    if not args.crops and (hint := photos.small_misses_hint(photo_set, crops)):
        _note(hint)
    _note("wrote " + ", ".join(str(p) for p in written.values()))


def cmd_evaluate(args) -> None:
    model, meta = load_model(args.model)
    if args.input and photos.is_photo_set(args.input):
        return cmd_evaluate_photos(args, model, meta)
    if args.labels or args.held_out is not None or args.crops:
        raise ValueError(f"{args.input or 'the dataset'}: --labels, --held-out and --crops are for labelled photo "
                         "sets (class folders or a labels.csv), not FER-2013")
    dataset = _load(args)
    if args.pipeline:
        split = dataset.split(args.pipeline)
        print(f"{args.pipeline}: {len(split)} faces placed into 640x480 frames, detector {args.detector}; "
              f"crop margin {meta.face_margin}, offset {meta.face_offset}, align {meta.face_align}, "
              f"low-contrast lift {meta.face_low_contrast or 'off'}", file=sys.stderr)
        print(fidelity.TABLE_HEADER)
        for row in fidelity.table_rows(model, meta, split.images, split.labels, args.detector):
            print(row, flush=True)
        return
    metrics = evaluation.evaluate(model, meta, dataset, tta=not args.no_tta)
    history, missing = stage_histories(args.checkpoint_dir or [DEFAULT_CHECKPOINT_DIR])
    for path in missing:
        print(f"note: no {path}, so no training curves from it")
    written = evaluation.write_results(metrics, history, args.results or "results",
                                       extra={"model": str(args.model), "dataset": dataset.source,
                                              "training": meta.training})
    print(evaluation.format_metrics(metrics))
    print("wrote " + ", ".join(str(p) for p in written.values()))


def _print_public_test_accuracy(args, meta, networks: list) -> None:
    """Print each ``(label, keras_model)``'s PublicTest accuracy on ``args.data``, if given."""
    if not args.data:
        return
    public = evaluation.align_to_model(data.load_fer2013(args.data, progress=not args.no_progress), meta)
    public = public.split("PublicTest")
    for label, network in networks:
        accuracy = (predict_probabilities(network, public.images).argmax(1) == public.labels).mean()
        print(f"{label}: PublicTest accuracy {accuracy:.4f}")


def cmd_ensemble(args) -> None:
    averaged, meta = average_models(args.models)
    meta.training["command"] = "python -m ferkit " + shlex.join(args.argv)
    members = networks_of(averaged, meta, args.out)
    _print_public_test_accuracy(args, meta, [(f"{record['model']} ({record['architecture']})", member)
                                             for member, record in members]
                                + [(f"average of {len(members)}", averaged)])
    saved = save_model(averaged, args.out, meta)
    print("saved " + ", ".join(str(p) for p in saved.values()))


def cmd_interpolate(args) -> None:
    blend = interpolate_weights(args.finetuned, args.start, args.alpha, args.member)
    blend.meta.training["command"] = "python -m ferkit " + shlex.join(args.argv)
    _print_public_test_accuracy(args, blend.meta, [
        (f"start, {args.start}" + (f" member {args.member}" if args.member else ""), blend.start),
        (f"fine-tuned, {args.finetuned}", blend.finetuned),
        (f"blend, alpha {args.alpha:g}", blend.model)])
    saved = save_model(blend.model, args.out, blend.meta)
    print("saved " + ", ".join(str(p) for p in saved.values()))


def cmd_export(args) -> None:
    print(export_onnx(args.model, args.out))


def cmd_quantize(args) -> int | None:
    stem = resolve_model(args.model)  # a missing model fails before the dataset is read
    dataset = data.load_fer2013(args.data, progress=not args.no_progress)
    calibration = quantize.Calibration(faces=args.calibration_faces, seed=args.seed)
    _note(f"calibrating on {calibration.faces} random {calibration.split} faces (seed {calibration.seed}), "
          "then scoring PublicTest in float and int8")
    result = quantize.quantize_model(stem, dataset, args.out, calibration=calibration, max_drop_points=args.max_drop,
                                     max_probability_change=args.max_change)
    print(f"PublicTest accuracy: float {result.public_test_float:.4f}, int8 {result.public_test_int8:.4f} "
          f"({-result.drop_points:+.2f} points) on {result.faces} faces")
    print(f"largest probability change {result.max_probability_change:.4f} "
          f"(99th percentile of each face's largest: {result.p99_probability_change:.4f})")
    if result.path is None:
        why = (f"its PublicTest accuracy is {result.drop_points:.2f} points below the float model's, more than "
               f"--max-drop {args.max_drop:g}" if result.drop_points > args.max_drop else
               f"a probability moves by {result.max_probability_change:.3f}, more than --max-change {args.max_change:g}")
        _note(f"error: {args.out or quantize.live_path(stem)}: not written: {why}; try more --calibration-faces or "
              "another --seed (a small network may not keep its answers in int8: the Live view then runs it in float)")
        return 2
    _note(f"wrote {result.path} (from weights {result.fingerprint[:12]}...)")
    return None


def cmd_serve(args) -> None:
    server.serve(args.host, args.port, args.model, open_browser=not args.no_browser,
          max_upload_bytes=int(args.max_upload_mib * 2**20), max_waiting_jobs=args.max_waiting_jobs,
          max_work_bytes=int(args.max_disk_gib * 2**30), job_ttl_seconds=args.job_ttl_minutes * 60)


def cmd_export_web(args) -> None:
    folder = server.write_static_site(args.folder, args.model)
    _note(f"wrote the static site to {folder}/; try: python -m http.server -d {folder}")


def _train_config(args) -> TrainConfig:
    """The settings the train and distill options describe: the options given, over the defaults or, with
    --finetune-from, over a second stage's (which options left unset keep)."""
    config = TrainConfig()
    if args.finetune_from:
        config = config.second_stage(args.finetune_from)
    return with_options(config, args)
