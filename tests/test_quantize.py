"""`python -m ferkit quantize`: the int8 copy the page's Live view runs, tied to the weights it was made from.

A small random model stands in for a trained one (the plumbing is the same); FER-2013 comes from $FERKIT_DATA.
The shipped `fer`'s copy is checked too: it must match the weights shipped beside it, or the page's Live view
silently runs the float model.
"""

import json
import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from ferkit import quantize, server  # noqa: E402
from ferkit.architectures import build_model  # noqa: E402
from ferkit.cli import main  # noqa: E402
from ferkit.model import SHIPPED_MODELS, ModelMeta, save_model  # noqa: E402


def small_model(stem, seed):
    keras.utils.set_random_seed(seed)
    save_model(build_model("vgg_small"), stem, ModelMeta(architecture="vgg_small"))
    return stem


def test_the_int8_copy_records_its_weights_and_is_served_only_while_they_hold(real_fer2013, tmp_path, capsys):
    stem = small_model(tmp_path / "small", seed=0)
    assert main(["quantize", str(stem), "--data", str(real_fer2013), "--calibration-faces", "40", "--seed", "3",
                 "--max-change", "1", "--no-progress"]) == 0  # a small random network: only the mechanics here
    printed = capsys.readouterr()
    copy = tmp_path / "small.int8.onnx"  # beside the model, where the server looks
    assert "PublicTest accuracy: float" in printed.out and "largest probability change" in printed.out
    assert f"wrote {copy}" in printed.err

    recorded = quantize.read_metadata(copy)
    assert recorded[quantize.FINGERPRINT_KEY] == quantize.model_fingerprint(stem)
    assert json.loads(recorded["ferkit.calibration"])["faces"] == 40
    assert json.loads(recorded["ferkit.calibration"])["seed"] == 3
    scores = json.loads(recorded["ferkit.public_test"])
    assert scores["faces"] == 3589 and 0 <= scores["int8"] <= 1 and 0 <= scores["float"] <= 1
    session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    ops = {node.op_type for node in onnx.load(str(copy)).graph.node}
    assert "QLinearConv" in ops and "Softmax" in ops  # int8 convolutions, a float softmax
    p = session.run(["probabilities"], {"face": np.full((2, 48, 48, 1), 128, np.float32)})[0]
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)

    # The server offers it as the model's live classifier, copied beside the float model.
    [entry] = server.prepare_models([str(stem)], tmp_path / "site")
    assert entry.live["live_url"] == "models/small.int8.onnx" and (tmp_path / "site" / "small.int8.onnx").is_file()
    assert entry.live["live_accuracy"]["PublicTest"] == scores["int8"]
    assert server.models_index([entry])["models"][0]["live_url"] == "models/small.int8.onnx"

    # Other weights under the same name: no live copy, and one line saying why.
    small_model(stem, seed=1)
    path, why = quantize.live_copy(stem)
    assert path is None and "other weights" in why
    capsys.readouterr()
    [entry] = server.prepare_models([str(stem)], tmp_path / "site2")
    assert entry.live == {} and "live_url" not in server.models_index([entry])["models"][0]
    assert not (tmp_path / "site2" / "small.int8.onnx").exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if "small.int8.onnx" in line]
    assert len(lines) == 1 and "other weights" in lines[0], lines
    assert "--data" in lines[0]  # the command to run, whole

    # No copy at all, the usual case (fer_lite has none): nothing to say.
    quantize.live_path(stem).unlink()
    [entry] = server.prepare_models([str(stem)], tmp_path / "site3")
    assert entry.live == {} and "Live view" not in capsys.readouterr().err


def test_a_copy_that_loses_too_much_accuracy_is_not_written(real_fer2013, tmp_path, capsys):
    stem = small_model(tmp_path / "small", seed=0)
    out = tmp_path / "refused.int8.onnx"
    # --max-drop -100: the copy would have to gain 100 points, so any copy is refused
    status = main(["quantize", str(stem), "--data", str(real_fer2013), "--calibration-faces", "20", "--out", str(out),
                   "--max-drop", "-100", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 2 and not out.exists() and not quantize.live_path(stem).exists()
    assert "PublicTest accuracy: float" in captured.out and "not written" in captured.err


def test_a_copy_without_a_fingerprint_is_not_served(tmp_path):
    stem = small_model(tmp_path / "small", seed=0)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(quantize.live_path(stem)))
    assert quantize.live_copy(stem)[0] is None and "records no" in quantize.live_copy(stem)[1]
    quantize.live_path(stem).write_bytes(b"not onnx")
    assert quantize.live_copy(stem)[0] is None and "unreadable" in quantize.live_copy(stem)[1]


@pytest.mark.skipif(not (SHIPPED_MODELS / "fer.json").exists(), reason="no shipped model in this checkout")
def test_the_shipped_fer_has_a_live_copy_of_its_current_weights(tmp_path):
    path, why = quantize.live_copy(SHIPPED_MODELS / "fer")
    assert path == SHIPPED_MODELS / "fer.int8.onnx", f"{why}: run python -m ferkit quantize fer --data FER2013"
    scores = json.loads(quantize.read_metadata(path)["ferkit.public_test"])
    assert scores["float"] - scores["int8"] <= quantize.MAX_DROP_POINTS / 100
    # A renamed copy of another model next to fer's int8 file gets none.
    for suffix in (".json", ".h5", ".meta.json"):
        shutil.copy(SHIPPED_MODELS / f"fer_lite{suffix}", tmp_path / f"fer{suffix}")
    shutil.copy(path, tmp_path / "fer.int8.onnx")
    assert quantize.live_copy(tmp_path / "fer")[0] is None


def test_a_copy_whose_probabilities_move_too_much_is_not_written(real_fer2013, tmp_path, capsys):
    stem = small_model(tmp_path / "small", seed=0)
    out = tmp_path / "refused.int8.onnx"
    # --max-change -1: no copy can keep every probability within a negative distance
    status = main(["quantize", str(stem), "--data", str(real_fer2013), "--calibration-faces", "20", "--out", str(out),
                   "--max-drop", "100", "--max-change", "-1", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 2 and not out.exists()
    assert "not written: a probability moves by" in captured.err and "--max-change -1" in captured.err
