"""The model files load, and predict the same, on the Keras and TensorFlow versions users have; a wheel carries them.

Google Colab preinstalls an older Keras than ferkit is developed with. CI
builds extra environments (the oldest supported pair, and Colab's) and names
their Python executables in ``$FERKIT_COMPAT_PYTHONS`` (separated by
``os.pathsep``); each test below runs once per environment, in a subprocess.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ferkit.architectures import build_model  # noqa: E402
from ferkit.model import ModelMeta, load_model, save_model  # noqa: E402
from ferkit.portable import portable_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "ferkit" / "models"  # the shipped models
COMPAT_ENV = "FERKIT_COMPAT_PYTHONS"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}

#: What a plain Keras user runs, with no ferkit import: docs/python-api.md's two lines, then the .keras file.
PLAIN_KERAS = """
import sys, keras, numpy as np
stem, inputs, out = sys.argv[1:4]
model = keras.models.model_from_json(open(stem + ".json").read())
model.load_weights(stem + ".h5")
x = np.load(inputs)
np.save(out, model.predict(x, verbose=0))
archive = keras.models.load_model(stem + ".keras")
np.save(out.replace(".npy", "_keras.npy"), archive.predict(x, verbose=0))
print(keras.__version__)
"""


def compat_pythons():
    listed = [p for p in os.environ.get(COMPAT_ENV, "").split(os.pathsep) if p]
    if not listed:
        return [pytest.param(None, marks=pytest.mark.skip(
            reason=f"no other Keras environments: .ci/run builds them and sets ${COMPAT_ENV}"))]
    return [pytest.param(p, id=Path(p).parents[1].name) for p in listed]


def _versions(python):
    script = "import keras, tensorflow as tf; print(keras.__version__, tf.__version__)"
    return subprocess.run([python, "-c", script], capture_output=True, text=True, env=ENV, check=True,
                          timeout=300).stdout.split()


@pytest.fixture(scope="module")
def faces():
    """64 faces to predict: real PrivateTest faces where FER-2013 is configured, generated ones otherwise."""
    from ferkit import data

    path = os.environ.get(data.DATA_ENV)
    if path and Path(path).exists():
        images = data.load_fer2013(path, progress=False).split("PrivateTest").images[:64]
    else:
        from ferkit.sample import cartoon_faces

        images = cartoon_faces(per_class_and_split=4, seed=3).images[:64]
    return images[..., None].astype(np.float32)


def test_saved_configs_leave_out_default_arguments_and_rebuild_the_same_model(tmp_path):
    keras.utils.set_random_seed(1)
    model = build_model("vgg_small")
    files = save_model(model, tmp_path / "m", ModelMeta(architecture="vgg_small"))
    text = files["json"].read_text()
    # Arguments recent Keras versions added, which older ones refuse; all at their defaults here.
    for newer in ("input_axes", "output_axes", "renorm", "quantization_config", "lora_rank", "optional"):
        assert f'"{newer}"' not in text, newer
    assert '"padding": "same"' in text and '"use_bias": false' in text  # set on purpose, so kept
    rebuilt, meta = load_model(tmp_path / "m")
    assert json.loads(rebuilt.to_json()) == json.loads(model.to_json())
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0))
    assert meta.saved_with["keras"] == keras.__version__
    for name in ("h5", "keras"):  # the config inside the other two files is the portable one too
        loaded = keras.models.load_model(files[name], compile=False)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_portable_config_keeps_what_a_class_cannot_rebuild_without():
    # Rescaling reads "offset" straight from its config: dropping the default would break loading.
    layer = keras.layers.Rescaling(1 / 255.0)
    config = portable_config(keras.saving.serialize_keras_object(layer))
    assert "offset" in config["config"]
    assert keras.saving.deserialize_keras_object(config).get_config() == layer.get_config()


SHIPPED = [pytest.param(name, marks=pytest.mark.skipif(not (MODELS / f"{name}.json").exists(),
                                                       reason=f"no shipped {name} in this checkout"))
           for name in ("fer", "fer_lite")]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("python", compat_pythons())
def test_shipped_model_predicts_identically_on_other_keras_versions(python, name, faces, tmp_path):
    np.save(tmp_path / "faces.npy", faces)
    stem = str(MODELS / name)
    result = subprocess.run([python, "-c", PLAIN_KERAS, stem, str(tmp_path / "faces.npy"), str(tmp_path / "p.npy")],
                            capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.models.model_from_json((MODELS / f"{name}.json").read_text())
    model.load_weights(MODELS / f"{name}.h5")
    here = model.predict(faces, verbose=0)
    for name in ("p.npy", "p_keras.npy"):
        there = np.load(tmp_path / name)
        np.testing.assert_allclose(there, here, atol=1e-5, err_msg=f"{name} with Keras {result.stdout.strip()}")
        np.testing.assert_array_equal(there.argmax(1), here.argmax(1))


@pytest.mark.skipif(not (MODELS / "fer.json").exists(), reason="no shipped model in this checkout")
@pytest.mark.parametrize("python", compat_pythons())
def test_demo_runs_on_other_keras_versions(python, tmp_path):
    versions = _versions(python)
    result = subprocess.run([python, "-m", "ferkit", "demo", "--out", str(tmp_path)], capture_output=True, text=True,
                            env=ENV, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, f"Keras/TF {versions}: {result.stderr[-3000:]}"
    assert result.stdout.startswith("sample (skimage.data.astronaut): happy"), result.stdout
    assert (tmp_path / "astronaut_annotated.jpg").exists()


def test_too_old_keras_is_named_with_the_versions_needed(monkeypatch):
    from ferkit import portable

    monkeypatch.setattr(keras, "__version__", "3.2.1")
    with pytest.raises(RuntimeError, match=r"Keras 3\.2\.1 \(needs 3\.4 or newer\)"):
        portable.check_versions()


# ---------------------------------------------------------------- the wheel: `pip install .` carries the models

#: What `pip install .` builds from (pyproject.toml's readme and licence, and the package).
BUILD_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "ferkit")
#: PyPI's default limit on one file.
MAX_WHEEL_BYTES = 100 * 2**20


def _link_or_copy(source, target):
    try:
        os.link(source, target)  # the models are 90 MB: link them where the file system allows
    except OSError:
        shutil.copy2(source, target)


def _files_under(folder: Path, *patterns: str) -> set[str]:
    return {path.relative_to(ROOT).as_posix() for pattern in patterns for path in folder.rglob(pattern)
            if path.is_file() and "__pycache__" not in path.parts}


@pytest.mark.skipif(not (MODELS / "fer.json").exists(), reason="no shipped model in this checkout")
def test_the_wheel_carries_the_models_and_the_page_and_its_demo_runs_from_it(tmp_path):
    # Build from a copy, as `pip install .` does, so no build/ folder is left in (or reused from) the clone.
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, copy_function=_link_or_copy,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-v",
                            "-w", str(tmp_path / "dist")], capture_output=True, text=True, env=ENV, timeout=300)
    log = built.stdout + built.stderr
    if built.returncode and re.search(r"(No matching distribution|Could not find a version).*setuptools", log):
        pytest.skip("pip cannot fetch setuptools to build with (no package index reachable)")
    assert built.returncode == 0, log[-3000:]
    # Setuptools' warnings (a folder missing from the packages, files not found, deprecated settings); with
    # PYTHONDONTWRITEBYTECODE set, distutils also notes that it compiles nothing, which is no fault.
    warnings = [line.strip() for line in log.splitlines() if re.search(r"warning|would be ignored", line, re.IGNORECASE)
                and "byte-compiling is disabled" not in line]
    assert not warnings, "\n".join(warnings[:20])
    [wheel] = (tmp_path / "dist").glob("ferkit-*.whl")
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, f"{wheel.name}: {wheel.stat().st_size / 2**20:.0f} MiB"
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = (_files_under(ROOT / "ferkit", "*.py") | _files_under(ROOT / "ferkit" / "web", "*")
                | _files_under(ROOT / "ferkit" / "assets", "*") | _files_under(MODELS, "*.json", "*.h5", "*.int8.onnx"))
    assert {f"ferkit/models/{name}{suffix}" for name in ("fer", "fer_lite")
            for suffix in (".json", ".h5", ".meta.json", ".metrics.json")} | {"ferkit/models/fer.int8.onnx"} <= expected
    assert {"ferkit/web/index.html", "ferkit/web/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm",
            "ferkit/assets/face_detection_yunet_2023mar.onnx"} <= expected
    assert sorted(expected - names) == []
    assert not [name for name in names if name.endswith(".keras") or not name.startswith("ferkit")]

    # Installed (unpacked onto the path) and run from a folder outside the clone: the models come from the package.
    site, elsewhere = (tmp_path / "site").resolve(), tmp_path / "elsewhere"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere.mkdir()
    env = {key: value for key, value in ENV.items() if key not in ("FERKIT_MODEL", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    script = "import ferkit.model as m; print(m.__file__); print(m.resolve_model()); print(m.resolve_model('fer_lite'))"
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=elsewhere,
                           timeout=120)
    assert found.returncode == 0, found.stderr[-3000:]
    assert found.stdout.split() == [str(site / "ferkit" / "model.py"), str(site / "ferkit" / "models" / "fer"),
                                    str(site / "ferkit" / "models" / "fer_lite")]
    demo = subprocess.run([sys.executable, "-m", "ferkit", "demo", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.startswith("sample (skimage.data.astronaut): happy"), demo.stdout
    assert (tmp_path / "out" / "astronaut_annotated.jpg").exists()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name, results", [("fer", "results/metrics.json"),
                                           ("fer_lite", "results/fer_lite/metrics.json")])
def test_each_shipped_model_carries_its_evaluated_accuracy(name, results, tmp_path):
    """NAME.metrics.json beside the model (in the wheel too) repeats results/'s numbers; the web page shows them."""
    if not (MODELS / f"{name}.json").exists() or not (ROOT / results).exists():
        pytest.skip(f"no shipped {name} or {results} in this checkout")
    beside = json.loads((MODELS / f"{name}.metrics.json").read_text())
    full = json.loads((ROOT / results).read_text())
    assert beside["model"] == full["model"] == name
    for split in ("PublicTest", "PrivateTest"):
        assert beside[split] == {key: full[split][key] for key in ("images", "accuracy", "accuracy_tta")}

    onnx = pytest.importorskip("onnx")
    from ferkit.server import _model_info

    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "m.onnx"))
    info = _model_info(MODELS / name, ModelMeta(), tmp_path / "m.onnx")
    assert info["accuracy"] == {split: full[split]["accuracy"] for split in ("PublicTest", "PrivateTest")}
