"""ONNX export: ONNX Runtime gives Keras's probabilities, for single networks and averages."""

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

from ferkit.cli import main  # noqa: E402
from ferkit.export import export_onnx  # noqa: E402
from ferkit.architectures import build_model  # noqa: E402
from ferkit.model import ModelMeta, average_models, load_model, save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "ferkit" / "models"  # the shipped models


def onnx_probabilities(path, faces):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"face": faces})[0]


def trained_like(architecture, seed, tmp_path):
    """A network with non-trivial BatchNorm statistics, so that folding them is really tested."""
    keras.utils.set_random_seed(seed)
    model = build_model(architecture)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
    return save_model(model, tmp_path / f"{architecture}{seed}", ModelMeta(architecture=architecture))["json"]


def test_single_networks_and_an_average_match_keras(tmp_path, cartoon):
    faces = cartoon.images[:32, ..., None].astype(np.float32)
    stems = [trained_like(name, seed, tmp_path).with_suffix("") for seed, name in enumerate(["vgg_small", "seed_cnn"])]
    averaged, meta = average_models(stems)
    save_model(averaged, tmp_path / "avg", meta)
    for stem in [*stems, tmp_path / "avg"]:
        model, _ = load_model(stem)
        written = export_onnx(stem)
        assert written == stem.with_suffix(".onnx")
        np.testing.assert_allclose(onnx_probabilities(written, faces), model.predict(faces, verbose=0), atol=1e-5)


def test_the_shipped_model_matches_on_real_faces(real_fer2013, tmp_path, capsys):
    if not (MODELS / "fer.json").exists():
        pytest.skip("no shipped model")
    from ferkit import data

    faces = data.load_fer2013(real_fer2013, progress=False).split("PrivateTest").images[:512, ..., None]
    faces = faces.astype(np.float32)
    assert main(["export", str(MODELS / "fer"), "--out", str(tmp_path / "fer.onnx")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "fer.onnx")
    model, _ = load_model(MODELS / "fer")
    expected = model.predict(faces, verbose=0)
    got = onnx_probabilities(tmp_path / "fer.onnx", faces)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.998
