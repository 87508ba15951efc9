"""An int8 copy of a model for the page's Live view: about twice as fast in WASM, probabilities within a few hundredths.

    python -m ferkit quantize fer --data fer2013.zip      # writes ferkit/models/fer.int8.onnx

Static quantization with ONNX Runtime (``quantize_static``, QOperator
format): weights int8 per output channel, activations uint8 with ranges
measured (MinMax) on ``calibration_faces`` random FER-2013 Training faces
(fixed seed). The tail stays float: each network's last dense layer, its
softmax and the average over the members, so probabilities are computed in
float from int8 features. The copy is then scored against the float32 graph
on PublicTest (PrivateTest is never looked at here) and written only if its
accuracy drops by ``max_drop_points`` or less and no probability moves by more
than ``max_probability_change`` (the page shows probabilities).

The file records in its ONNX ``metadata_props`` what it was made from:
``ferkit.weights_sha256`` (:func:`model_fingerprint`: the SHA-256 of the
model's NAME.h5, which holds every weight), the calibration settings and
both PublicTest scores. ``ferkit serve`` / ``export-web`` offer
STEM.int8.onnx as the model's live classifier only while that fingerprint
matches the model beside it (:func:`live_copy`), so retrained weights never
meet a stale int8 copy. The Photo view keeps the float model: the page
promises Predictor's probabilities within 0.02 there, which int8 does not
keep (docs/experiments/page-speed.md).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ferkit import files
from ferkit.data import FerDataset
from ferkit.evaluation import align_to_model
from ferkit.export import onnx_graph
from ferkit.model import load_model, resolve_model

# onnx and onnxruntime are imported where a copy is made or read: the command line and the server import this
# module and must start fast.

#: The int8 copy's file name beside the model: STEM + LIVE_SUFFIX.
LIVE_SUFFIX = ".int8.onnx"
#: The metadata key holding the fingerprint of the weights the copy was made from.
FINGERPRINT_KEY = "ferkit.weights_sha256"
#: Largest PublicTest accuracy drop (percentage points) a copy may show and still be written (issue 41).
MAX_DROP_POINTS = 0.3
#: Largest change of any probability over PublicTest a copy may show and still be written: Live shows the
#: probabilities, so a copy must give the model's answers, not only its accuracy (fer: 0.034; fer_lite: 0.16, refused).
MAX_PROBABILITY_CHANGE = 0.05
#: ONNX operators left in float: the probabilities are computed from int8 features, not rounded themselves.
FLOAT_TAIL_OPS = ("Softmax", "Mean", "Identity")


@dataclass
class Calibration:
    """How the activation ranges were measured: random faces of one split, a fixed seed, ONNX Runtime's settings."""

    faces: int = 400
    seed: int = 0
    split: str = "Training"
    method: str = "MinMax"
    per_channel: bool = True
    activations: str = "QUInt8"
    weights: str = "QInt8"
    quant_format: str = "QOperator"


@dataclass
class Quantized:
    """What :func:`quantize_model` measured (and wrote, unless refused)."""

    path: Path | None  # the file written; None where the copy was refused
    public_test_float: float  # accuracy of the float32 graph
    public_test_int8: float
    max_probability_change: float  # the largest |p_int8 - p_float| over PublicTest's faces and classes
    p99_probability_change: float  # 99th percentile over faces of each face's largest change
    faces: int  # PublicTest faces scored
    fingerprint: str
    calibration: Calibration

    @property
    def drop_points(self) -> float:
        return 100 * (self.public_test_float - self.public_test_int8)


def model_fingerprint(model: str | Path | None = None) -> str:
    """The SHA-256 of the model's NAME.h5 (hex): it holds every weight (and the architecture), so it changes when
    they do; reading it costs about a tenth of a second for the 40 MB ``fer``."""
    stem = resolve_model(model)
    digest = hashlib.sha256()
    with open(stem.with_suffix(".h5"), "rb") as weights:
        for block in iter(lambda: weights.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def live_path(stem: Path) -> Path:
    """Where the int8 copy of the model at ``stem`` lies: STEM.int8.onnx beside it."""
    return stem.with_name(stem.name + LIVE_SUFFIX)


def read_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict."""
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}


def live_copy(stem: Path) -> tuple[Path | None, str]:
    """(the model's int8 copy, why) where STEM.int8.onnx exists and was made from the model's current weights;
    (None, why not) otherwise: no copy, a copy without a fingerprint, or one made from other weights."""
    path = live_path(stem)
    if not path.is_file():
        return None, f"no {path.name} beside the model"
    try:
        recorded = read_metadata(path).get(FINGERPRINT_KEY)
    except Exception as error:  # a damaged file is not served; the server still starts
        return None, f"{path.name} is unreadable ({type(error).__name__}: {error})"
    if not recorded:
        return None, f"{path.name} records no {FINGERPRINT_KEY}"
    if recorded != model_fingerprint(stem):
        return None, (f"{path.name} was made from other weights than {stem.name}.h5 now holds; "
                      f"make it again: python -m ferkit quantize {stem} --data FER2013")
    return path, f"{path.name} matches {stem.name}.h5"


def quantize_model(model: str | Path | None, dataset: FerDataset, output: str | Path | None = None, *,
                   calibration: Calibration | None = None, max_drop_points: float = MAX_DROP_POINTS,
                   max_probability_change: float = MAX_PROBABILITY_CHANGE) -> Quantized:
    """Make the int8 copy of ``model`` (stem or path), score it against the float32 graph on ``dataset``'s
    PublicTest, and write it to ``output`` (default STEM.int8.onnx beside the model, where the server looks) unless
    its accuracy drops by more than ``max_drop_points`` or any probability moves by more than
    ``max_probability_change`` (then ``path`` is None and nothing is written)."""
    import onnx

    calibration = calibration or Calibration()
    stem = resolve_model(model)
    keras_model, meta = load_model(stem)
    dataset = align_to_model(dataset, meta)
    if dataset.images.shape[1:] != (meta.input_size, meta.input_size):
        raise ValueError(f"{stem.name} takes {meta.input_size}x{meta.input_size} faces; the dataset's are "
                         f"{dataset.images.shape[1]}x{dataset.images.shape[2]}")
    training, public = dataset.split(calibration.split).images, dataset.split("PublicTest")
    for split, faces in ((calibration.split, training), ("PublicTest", public.images)):
        if len(faces) == 0:
            raise ValueError(f"{dataset.source}: no {split} faces to make and score the int8 copy with")
    rng = np.random.default_rng(calibration.seed)
    chosen = training[rng.choice(len(training), min(calibration.faces, len(training)), replace=False)]
    fingerprint = model_fingerprint(stem)
    with tempfile.TemporaryDirectory(prefix="ferkit-quantize-") as work:
        float_path = Path(work) / "float.onnx"
        onnx.save(onnx_graph(keras_model, meta, stem), str(float_path))
        quantized = _quantize_static(float_path, chosen, calibration)
        reference, probabilities = (_probabilities(path, public.images) for path in (float_path, quantized))
        change = np.abs(probabilities - reference)
        result = Quantized(None, _accuracy(reference, public.labels), _accuracy(probabilities, public.labels),
                           float(change.max()), float(np.quantile(change.max(axis=1), 0.99)),
                           len(public.images), fingerprint, calibration)
        if result.drop_points > max_drop_points or result.max_probability_change > max_probability_change:
            return result
        copy = onnx.load(str(quantized))
    copy.doc_string = f"int8 copy of {stem.name} for the page's Live view (ferkit.quantize)"
    onnx.helper.set_model_props(copy, {
        "ferkit.model": stem.name,
        FINGERPRINT_KEY: fingerprint,
        "ferkit.calibration": json.dumps(asdict(calibration)),
        "ferkit.public_test": json.dumps({"float": result.public_test_float, "int8": result.public_test_int8,
                                          "faces": result.faces,
                                          "max_probability_change": result.max_probability_change}),
    })
    result.path = files.write_bytes(Path(output) if output else live_path(stem), copy.SerializeToString())
    return result


def _quantize_static(float_path: Path, faces: np.ndarray, calibration: Calibration) -> Path:
    """ONNX Runtime's static quantization of the graph at ``float_path`` with activation ranges measured on
    ``faces`` ((N, S, S) uint8, one at a time); returns the int8 graph's path, beside ``float_path``."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        def __init__(self):
            self.faces = iter(faces)

        def get_next(self):
            face = next(self.faces, None)
            return None if face is None else {"face": face[None, :, :, None].astype(np.float32)}

    prepared, quantized = float_path.with_name("prepared.onnx"), float_path.with_name("int8.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)  # shapes and folding, as advised
    quantize_static(str(prepared), str(quantized), Faces(),
                    quant_format=getattr(QuantFormat, calibration.quant_format),
                    per_channel=calibration.per_channel,
                    activation_type=getattr(QuantType, calibration.activations),
                    weight_type=getattr(QuantType, calibration.weights),
                    calibrate_method=getattr(CalibrationMethod, calibration.method),
                    nodes_to_exclude=float_tail(onnx.load(str(prepared)).graph))
    return quantized


def float_tail(graph) -> list[str]:
    """The nodes of ``graph`` (an ONNX GraphProto) left in float: softmax, the average, and each network's last
    dense layer (the Gemm whose output the softmax reads), so the probabilities are not rounded to int8 steps."""
    producer = {output: node for node in graph.node for output in node.output}
    tail = [node.name for node in graph.node if node.op_type in FLOAT_TAIL_OPS]
    for node in graph.node:
        if node.op_type == "Softmax" and node.input[0] in producer and producer[node.input[0]].op_type == "Gemm":
            tail.append(producer[node.input[0]].name)
    return tail


def _probabilities(path: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, S, S) uint8 faces -> (N, classes) float32 through the ONNX file at ``path`` (ONNX Runtime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images[..., None].astype(np.float32)
    return np.concatenate([session.run(["probabilities"], {"face": x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float((probabilities.argmax(axis=1) == np.asarray(labels)).mean()) if len(labels) else 0.0
