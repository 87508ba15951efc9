"""``python -m ferkit``: the command line. Each command's ``--help`` explains it."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace

from ferkit import commands, data, evaluation, photos, portable, quantize, server, video_jobs
from ferkit.analyse import add_commands
from ferkit.faces import DETECTORS
from ferkit.history import DEFAULT_CHECKPOINT_DIR
from ferkit.images import MAX_IMAGE_PIXELS, ImageWarning
from ferkit.options import add_options
from ferkit.settings import VIDEO_SUFFIXES
from ferkit.training import TrainConfig
from ferkit.video import MAX_VIDEO_FRAMES

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


def _add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model stem or .json/.h5 path (default: $FERKIT_MODEL, else the shipped "
                                        "fer model, found from any folder)")


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
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


def _add_train_options(parser, defaults: TrainConfig, out: str, checkpoint_dir: str) -> None:
    """The options train and distill share: one per setting of TrainConfig that has a flag, with ``defaults``'
    values as defaults, and those of the run itself (data, --finetune-from, --out, ...)."""
    parser.add_argument("input", nargs="?", help=_DATA_HELP)
    start = parser.add_mutually_exclusive_group()
    add_options(parser, defaults, staged=(defaults.second_stage("MODEL"), "--finetune-from"),
                containers={"init_weights": start})
    start.add_argument("--finetune-from", metavar="MODEL",
                       help="a further training stage, as the shipped model's CPU networks were trained: start from "
                            "MODEL (the previous stage's --out) with a lower learning rate and milder rotation "
                            "and zoom")
    parser.add_argument("--limit", type=int, metavar="N", help="use at most N random images per split (quick runs)")
    parser.add_argument("--out", default=out, help="model files stem: OUT.json, OUT.h5, ...")
    parser.add_argument("--checkpoint-dir", default=checkpoint_dir,
                        help="per-epoch checkpoints and history.csv; give each training stage its own")
    _add_subset_options(parser)
    _add_reading_options(parser)


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
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = subcommands.add_parser(
        "convert", help="write FER-2013 as the challenge CSV (emotion,pixels,Usage) or a .npz cache",
        description="Read FER-2013 from INPUT and write it to OUTPUT. A .csv output uses the original "
                    "challenge schema and label ids (0=angry 1=disgust 2=fear 3=happy 4=sad 5=surprise "
                    "6=neutral), interchangeable with Kaggle's fer2013.csv; a .npz output reloads fastest.")
    convert.add_argument("input", help=_DATA_HELP)
    convert.add_argument("output", help="where to write: a path ending in .csv or .npz, e.g. data/fer2013.csv")
    _add_reading_options(convert)
    convert.set_defaults(func=commands.cmd_convert)

    info = subcommands.add_parser(
        "info", help="print counts per split and class, and image statistics per split",
        description="Print per-split, per-class counts and per-split image statistics (brightness, "
                    "contrast, sharpness), so a damaged or altered copy of the dataset is visible at a glance.")
    info.add_argument("input", nargs="?", help=_DATA_HELP)
    _add_subset_options(info)
    _add_reading_options(info)
    info.set_defaults(func=commands.cmd_info)

    train_command = subcommands.add_parser(
        "train", help="train a CNN on the Training split, select on PublicTest, save fer.json/fer.h5",
        formatter_class=_DefaultsHelpFormatter,
        description="Train on Training, validate on PublicTest every epoch, keep the best epoch, and save "
                    "OUT.json (architecture), OUT.h5 (weights), OUT.keras and OUT.meta.json (class names, "
                    "preprocessing). Checkpoints after every epoch: run the same command again after an "
                    "interruption and it resumes where it stopped.")
    _add_train_options(train_command, TrainConfig(), "fer", DEFAULT_CHECKPOINT_DIR)
    train_command.set_defaults(func=commands.cmd_train)

    distill = subcommands.add_parser(
        "distill", help="train a compact network (fer_lite) towards the shipped average's probabilities",
        formatter_class=_DefaultsHelpFormatter,
        description="Knowledge distillation: train a small network on the Training images towards the "
                    "teacher's probabilities (each image and its mirror, computed once and cached in the "
                    "checkpoint folder), mixed with the true labels by --teacher-weight; select on PublicTest "
                    "and save OUT.json/.h5/.keras/.meta.json, loadable like fer (--model fer_lite). Resumes "
                    "when run again, like train.")
    distill_defaults = replace(TrainConfig(), architecture="lite", label_smoothing=0.0, teacher="fer")
    _add_train_options(distill, distill_defaults, "fer_lite", "checkpoints/fer_lite")
    distill.set_defaults(func=commands.cmd_train)

    evaluate = subcommands.add_parser(
        "evaluate", help="accuracy on FER-2013's test splits, or on your own labelled photos",
        description="FER-2013: evaluate a saved model on PublicTest and PrivateTest (with and without test-time "
                    "augmentation: flips and small shifts), print per-class precision/recall/F1 and write "
                    "RESULTS/metrics.json, confusion_matrix.png and training_curves.png. Labelled photos (a folder "
                    "of class folders, or a labels.csv with file and label columns and optionally identity): the "
                    "whole pipeline (find the face, crop, classify), per-class recall, macro recall, accuracy, "
                    "faces found, 95% intervals resampling people, a confusion matrix and a per-photo CSV; with "
                    "--crops, each image is classified whole as one face already cut out.")
    evaluate.add_argument("input", nargs="?", help=_DATA_HELP + "; or labelled photos (class folders or labels.csv)")
    _add_model_option(evaluate)
    evaluate.add_argument("--results", help="output folder (default: results, or results/photos/NAME for photos)")
    evaluate.add_argument("--labels", action="append", metavar="THEIRS=OURS,...",
                          help="photos: map the set's label names to the model's, e.g. happiness=happy,anger=angry; "
                               "labels that map to no class are listed and left out")
    evaluate.add_argument("--held-out", type=float, nargs="?", const=commands.HELD_OUT_AS_TRAINED, metavar="FRACTION",
                          help="photos: evaluate only the people `train --photos` holds out for validation "
                               "(FRACTION of each class, by person; default: the fraction the model was trained "
                               f"with on this set, else {photos.HELD_OUT_FRACTION:g})")
    evaluate.add_argument("--min-support", type=int, default=evaluation.MIN_SUPPORT, metavar="N",
                          help="photos: classes with fewer than N photos are shown but left out of the macro recall "
                               f"(default: {evaluation.MIN_SUPPORT})")
    evaluate.add_argument("--resamples", type=int, default=1000, metavar="N",
                          help="photos: resamplings of people for the 95%% intervals (default: 1000; 0: none)")
    evaluate.add_argument("--tta", action="store_true", help="photos: test-time augmentation, as predict --tta")
    evaluate.add_argument("--max-pixels", type=_limit, default=MAX_IMAGE_PIXELS, metavar="N",
                          help=f"photos: refuse photos of more than N pixels before decoding them, 'none' for no "
                               f"limit (default: {MAX_IMAGE_PIXELS})")
    evaluate.add_argument("--crops", action="store_true",
                          help="photos: each image is one face already cut out and framed like FER-2013's (a crop "
                               "set such as CK+48): classify it whole, without searching for a face")
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
    evaluate.set_defaults(func=commands.cmd_evaluate)

    ensemble = subcommands.add_parser(
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
    ensemble.set_defaults(func=commands.cmd_ensemble)

    interpolate = subcommands.add_parser(
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
    interpolate.set_defaults(func=commands.cmd_interpolate)

    export = subcommands.add_parser(
        "export", help="write a model as ONNX (MODEL.onnx beside MODEL.meta.json) for browsers and other runtimes",
        description="Translate a saved model's layers into one ONNX graph (BatchNorm folded into the layer before "
                    "it; an average becomes a Mean over its members). Input 'face' (N, 48, 48, 1) float32 pixels "
                    "0-255, output 'probabilities' (N, classes), as in Keras; class names and crop settings stay "
                    "in MODEL.meta.json.")
    export.add_argument("model", nargs="?", help="model stem or .json/.h5 path (default: $FERKIT_MODEL, else fer)")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    export.add_argument("--out", help="output file (default: MODEL.onnx beside the model; for a shipped model, in the "
                                        "working folder)")
    export.set_defaults(func=commands.cmd_export)

    int8 = subcommands.add_parser(
        "quantize", help="write a model's int8 copy (MODEL.int8.onnx) that the page's Live view runs",
        description="Quantize the model's ONNX graph to int8 (ONNX Runtime's static quantization: int8 weights per "
                    "channel, uint8 activations with ranges measured on random FER-2013 Training faces; the last "
                    "dense layer, softmax and average stay float), score it against the float graph on PublicTest "
                    "and write it only if the accuracy drops by --max-drop points or less and no probability moves "
                    "by more than --max-change. The file records the "
                    "fingerprint of the weights it came from: `serve` and `export-web` offer it to the Live view "
                    "while the model's weights are unchanged (the Photo view keeps the float model).")
    int8.add_argument("model", nargs="?", help="model stem or .json/.h5 path (default: $FERKIT_MODEL, else fer)")
    int8.add_argument("--data", metavar="DATASET", help=_DATA_HELP)
    int8.add_argument("--out", help="output file (default: MODEL.int8.onnx beside the model, where the server looks)")
    int8.add_argument("--calibration-faces", type=int, default=quantize.Calibration.faces, metavar="N",
                      help="random Training faces the activation ranges are measured on (default: %(default)s)")
    int8.add_argument("--seed", type=int, default=quantize.Calibration.seed,
                      help="seed of the calibration faces' draw (default: %(default)s)")
    int8.add_argument("--max-drop", type=float, default=quantize.MAX_DROP_POINTS, metavar="POINTS",
                      help="refuse to write the copy if its PublicTest accuracy is more than this many percentage "
                           "points below the float model's (default: %(default)s)")
    int8.add_argument("--max-change", type=float, default=quantize.MAX_PROBABILITY_CHANGE, metavar="P",
                      help="refuse to write the copy if any PublicTest probability moves by more than this "
                           "(default: %(default)s)")
    int8.add_argument("--no-progress", action="store_true", help="no progress bar")
    int8.set_defaults(func=commands.cmd_quantize)

    serve = subcommands.add_parser(
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
    limits = serve.add_argument_group("limits of the Video view (docs/web-app.md, \"Threat model\")")
    limits.add_argument("--max-upload-mib", type=float, default=server.MAX_UPLOAD_BYTES / 2**20, metavar="MIB",
                        help="largest video accepted (default: %(default)g)")
    limits.add_argument("--max-waiting-jobs", type=int, default=video_jobs.MAX_WAITING_JOBS, metavar="N",
                        help="videos that may wait behind the one being annotated; more get 429 (default: %(default)s)")
    limits.add_argument("--max-disk-gib", type=float, default=video_jobs.MAX_WORK_BYTES / 2**30, metavar="GIB",
                        help="disk the uploads and results may take together (default: %(default)g)")
    limits.add_argument("--job-ttl-minutes", type=float, default=video_jobs.JOB_TTL_SECONDS / 60, metavar="MIN",
                        help="finished videos and their results are removed after this long (default: %(default)g)")
    serve.set_defaults(func=commands.cmd_serve)

    export_web = subcommands.add_parser(
        "export-web", help="write the page with its models as a static site (Live and Photo views)",
        description="Write a self-contained folder (HTML, JavaScript, WASM, models) that works from any static host, "
                    "e.g. `python -m http.server -d DIR`. Without cross-origin isolation headers the page runs "
                    "ONNX Runtime on one thread.")
    export_web.add_argument("folder", help="a new or empty folder")
    export_web.add_argument("--model", action="append", metavar="MODEL", help="a model to include (repeatable)")
    export_web.set_defaults(func=commands.cmd_export_web)

    predict = subcommands.add_parser(
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
    predict.add_argument("--max-frames", type=_limit, default=MAX_VIDEO_FRAMES, metavar="N",
                         help=f"videos: refuse more than N frames, 'none' for no limit (default: {MAX_VIDEO_FRAMES}, "
                              "an hour at 30 fps)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(func=commands.cmd_predict)

    demo = subcommands.add_parser(
        "demo", help="annotate the built-in sample photo (no download)",
        description="Find and classify the face in the sample photo that ships with scikit-image "
                    "(skimage.data.astronaut), print the result and save the annotated image in --out.")
    _add_prediction_options(demo)
    demo.set_defaults(func=commands.cmd_demo)
    add_commands(subcommands)
    return parser


def _plain_warnings() -> None:
    """ferkit's own warnings (a .jpg holding PNG data) as one "warning: ..." line each, every time."""
    warnings.simplefilter("always", ImageWarning)
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ImageWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


_TENSORFLOW_COMMANDS = ("train", "distill", "evaluate", "ensemble", "interpolate", "predict", "demo", "export",
                       "quantize", "serve", "export-web", "analyse")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status: 0 done, 1 done but some inputs were skipped, 2 failed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ[portable.VERBOSE_ENV] = "1"
    args.argv = [a for a in argv if a != "--verbose"]  # recorded with a trained model
    try:
        if args.command in _TENSORFLOW_COMMANDS:
            portable.import_keras()
        _plain_warnings()
        status = args.func(args)
    except (data.DatasetError, ValueError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback
        print("interrupted", file=sys.stderr)
        return 130
    return status or 0
