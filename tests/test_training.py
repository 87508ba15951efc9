"""Models, the threshold-stop callback, augmentation, resume, saving and distribution."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from ferkit import augmentation, evaluation, finetune, training  # noqa: E402
from ferkit.architectures import build_model, with_fused_batchnorm  # noqa: E402
from ferkit.callbacks import ThresholdStop, WeightAverage  # noqa: E402
from ferkit.history import join_histories, read_history  # noqa: E402
from ferkit.inference import predict_probabilities, to_model_input  # noqa: E402
from ferkit.model import ModelMeta, load_model, save_model  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def run_python(code, cwd, timeout=300, **env):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env={**ENV, **env},
                            capture_output=True, text=True, timeout=timeout)
    return result


# ---------------------------------------------------------------- ThresholdStop


class _Model:
    stop_training = False


def drive(callback, epochs):
    """Feed ``callback`` epoch logs as fit would; return the epochs it saw before stopping."""
    model = _Model()
    callback.set_model(model)
    callback.on_train_begin()
    seen = 0
    for epoch, logs in enumerate(epochs):
        callback.on_epoch_end(epoch, logs)
        seen += 1
        if model.stop_training:
            break
    return seen


def logs(acc, val):
    return {"accuracy": acc, "val_accuracy": val, "loss": 1 - acc, "val_loss": 1 - val}


def test_threshold_stop_waits_for_both_metrics():
    history = [logs(0.60, 0.72), logs(0.76, 0.70), logs(0.74, 0.72), logs(0.75, 0.71), logs(0.80, 0.75)]
    stop = ThresholdStop(accuracy=0.75, val_accuracy=0.71, verbose=0)
    assert drive(stop, history) == 4  # epoch 4 is the first with both >= (inclusive)
    assert stop.stopped_epoch == 4


def test_threshold_stop_never_fires_below_thresholds():
    stop = ThresholdStop(accuracy=0.75, val_accuracy=0.71, verbose=0)
    assert drive(stop, [logs(0.9, 0.709), logs(0.749, 0.9)]) == 2
    assert stop.stopped_epoch is None


def test_threshold_stop_reads_the_named_metrics():
    # Validation loss going below a threshold must not count as accuracy.
    stop = ThresholdStop(accuracy=0.5, val_accuracy=0.5, verbose=0)
    assert drive(stop, [{"accuracy": 0.9, "val_accuracy": 0.2, "val_loss": 0.9, "loss": 0.9}]) == 1
    assert stop.stopped_epoch is None
    custom = ThresholdStop(accuracy=0.5, val_accuracy=0.5, monitor="acc", val_monitor="val_acc", verbose=0)
    assert drive(custom, [{"acc": 0.6, "val_acc": 0.6, "accuracy": 0.0, "val_accuracy": 0.0}]) == 1
    assert custom.stopped_epoch == 1


def test_threshold_stop_missing_metric_is_an_error():
    with pytest.raises(ValueError, match="needs val_accuracy"):
        drive(ThresholdStop(verbose=0), [{"accuracy": 0.9, "loss": 0.1}])


def test_threshold_stop_ends_a_real_fit_at_the_right_epoch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0] > 0).astype(int), 2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.05), "categorical_crossentropy", metrics=["accuracy"])
    stop = ThresholdStop(accuracy=0.9, val_accuracy=0.9, verbose=0)
    history = model.fit(x, y, validation_data=(x, y), epochs=200, callbacks=[stop], verbose=0).history
    first = next(i for i, (a, v) in enumerate(zip(history["accuracy"], history["val_accuracy"])) if a >= 0.9 and v >= 0.9)
    assert stop.stopped_epoch == first + 1 == len(history["accuracy"]) < 200


# ---------------------------------------------------------------- augmentation and models


def test_flip_only_augmentation_mirrors_or_keeps():
    images = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 1)).astype("float32")
    only_flip = augmentation.Augmentation(rotation_degrees=0, zoom=0, shift=0, erase_probability=0, brightness=0,
                                          contrast=0)
    out = augmentation.augment_batch(images, only_flip, np.random.default_rng(0))
    same = np.isclose(out, images, atol=1e-3).all(axis=(1, 2, 3))
    mirrored = np.isclose(out, images[:, :, ::-1], atol=1e-3).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_shift_and_erasing_change_images_within_range():
    images = np.full((32, 48, 48, 1), 128, "float32")
    images[:, 20:28, 20:28] = 255
    out = augmentation.augment_batch(images, augmentation.Augmentation(), np.random.default_rng(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert not np.isclose(out, images).all(axis=(1, 2, 3)).any()


def test_augmented_rotation_turns_a_bar_about_the_centre():
    images = np.zeros((1, 48, 48, 1), "float32")
    images[0, 23:25, 4:44] = 255  # a horizontal bar through the centre
    quarter = augmentation.Augmentation(flip=False, rotation_degrees=0, zoom=0, shift=0, erase_probability=0,
                                    brightness=0, contrast=0)
    np.testing.assert_allclose(augmentation.augment_batch(images, quarter, np.random.default_rng(0)), images, atol=1e-3)
    turned = augmentation.augment_batch(images, replace(quarter, rotation_degrees=90), _FixedDraws(1.0))
    assert turned[0, 4:44, 23:25].mean() > 200 and turned[0, 23:25, 4:18].mean() < 60  # now vertical


def test_blur_and_jpeg_soften_the_drawn_share_of_images_only():
    checkers = np.indices((48, 48)).sum(0) % 2 * 255.0  # all detail, the first thing blur and JPEG remove
    images = np.repeat(checkers[None, :, :, None], 200, 0).astype("float32")
    still = augmentation.Augmentation(flip=False, rotation_degrees=0, zoom=0, shift=0, erase_probability=0,
                                  brightness=0, contrast=0)
    detail = lambda batch: np.abs(np.diff(batch, axis=2)).mean(axis=(1, 2, 3))  # per image
    np.testing.assert_array_equal(augmentation.augment_batch(images, still, np.random.default_rng(0)), images)
    for change in ({"blur_probability": 0.5}, {"jpeg_probability": 0.5, "jpeg_quality": (20, 20)}):
        out = augmentation.augment_batch(images, replace(still, **change), np.random.default_rng(1))
        softened = detail(out) < 0.99 * detail(images)
        unchanged = (out == images).all(axis=(1, 2, 3))
        assert (softened | unchanged).all(), change
        assert 0.35 < softened.mean() < 0.65, change  # about the share asked for
        assert out.min() >= 0 and out.max() <= 255
    sigma_one = augmentation.augment_batch(images[:1], replace(still, blur_probability=1.0, blur_sigma=(1.0, 1.0)),
                                       np.random.default_rng(2))
    import cv2
    np.testing.assert_allclose(sigma_one[0, :, :, 0], cv2.GaussianBlur(checkers.astype("float32"), (0, 0), 1.0,
                                                                      borderType=cv2.BORDER_REFLECT), atol=1e-3)


def test_side_light_gamma_and_low_resolution_change_the_drawn_share_as_described():
    flat = np.full((300, 48, 48, 1), 128.0, "float32")
    still = augmentation.Augmentation(flip=False, rotation_degrees=0, zoom=0, shift=0, erase_probability=0,
                                      brightness=0, contrast=0)
    # Side light: a flat grey face comes out brighter on one side than the other, its middle about unchanged.
    lit = augmentation.augment_batch(flat, replace(still, light_probability=0.5), np.random.default_rng(0))
    changed = ~(lit == flat).all(axis=(1, 2, 3))
    assert 0.4 < changed.mean() < 0.6
    spread = lit[changed].max(axis=(1, 2, 3)) - lit[changed].min(axis=(1, 2, 3))
    assert (spread > 2 * 0.2 * 128 * 0.9).all() and (spread < 2 * 0.6 * 128 * 1.01).all()
    np.testing.assert_allclose(lit[changed][:, 22:26, 22:26].mean(axis=(1, 2, 3)), 128, atol=128 * 0.6 * 0.1)
    # Gamma: grey 128 becomes 255 (128/255)^gamma, gamma within the range, darker and lighter both drawn.
    graded = augmentation.augment_batch(flat, replace(still, gamma_probability=1.0), np.random.default_rng(1))
    gammas = np.log(graded[:, 0, 0, 0] / 255) / np.log(128 / 255)
    assert gammas.min() >= 0.5 - 1e-3 and gammas.max() <= 2.0 + 1e-3 and (gammas < 0.9).any() and (gammas > 1.1).any()
    assert (graded == graded[:, :1, :1]).all()  # the same curve for every pixel
    # Low resolution: a fine checkerboard loses its detail; a flat face stays flat.
    checkers = np.repeat((np.indices((48, 48)).sum(0) % 2 * 255.0)[None, :, :, None], 50, 0).astype("float32")
    shrunk = augmentation.augment_batch(checkers, replace(still, low_resolution_probability=1.0),
                                        np.random.default_rng(2))
    assert (np.abs(np.diff(shrunk, axis=2)).mean(axis=(1, 2, 3)) < 0.2 * 255).all()
    np.testing.assert_allclose(augmentation.augment_batch(flat, replace(still, low_resolution_probability=1.0),
                                                          np.random.default_rng(3)), flat, atol=1e-3)


class _FixedDraws:
    """A stand-in numpy Generator whose uniform(low, high) always returns low + fraction * (high - low)."""

    def __init__(self, fraction):
        self.fraction = fraction

    def uniform(self, low, high, size):
        return np.full(size, low + self.fraction * (high - low))


def test_training_batches_cover_every_image_once_per_epoch_and_replay_after_resume():
    images = np.arange(50, dtype=np.uint8).repeat(48 * 48).reshape(50, 48, 48)
    labels = np.arange(50) % 7
    plain = dict(training=True, augmentation=None, seed=3)
    batches = augmentation.make_dataset(images, labels, 7, 16, **plain)
    assert len(batches) == 3  # 50 // 16: the partial batch is dropped
    epochs = []
    for _ in range(3):
        seen = np.concatenate([batches[i][0][:, 0, 0, 0] for i in range(len(batches))]).astype(int)
        targets = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert len(set(seen)) == 48 and (targets.argmax(1) == labels[seen]).all()
        epochs.append(seen)
        batches.on_epoch_end()
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    resumed = augmentation.make_dataset(images, labels, 7, 16, **plain, first_epoch=2)
    np.testing.assert_array_equal(np.concatenate([resumed[i][0][:, 0, 0, 0] for i in range(3)]), epochs[2])
    augmented = augmentation.make_dataset(images, labels, 7, 16, training=True,
                                          augmentation=augmentation.Augmentation())
    np.testing.assert_array_equal(augmented[1][0], augmented[1][0])  # a batch is a function of (seed, epoch, index)


def test_fit_moves_the_batches_on_to_a_new_epoch_each_epoch():
    images = np.zeros((64, 48, 48), np.uint8)
    batches = augmentation.make_dataset(images, np.arange(64) % 7, 7, 16, training=True, augmentation=None)
    epochs_read = []
    read = type(batches).__getitem__
    type(batches).__getitem__ = lambda self, index: (epochs_read.append(self.epoch), read(self, index))[1]
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")])
    model.compile("sgd", "categorical_crossentropy")
    model.fit(batches, epochs=3, verbose=0)
    # Each of the 3 epochs reads its 4 batches from a shuffle of its own. (Keras reads a batch or two more
    # to learn the shapes, and may move the dataset on once before the first epoch: the offset is the same
    # in a resumed run, so it replays the same batches.)
    assert sorted(epochs_read.count(epoch) for epoch in set(epochs_read))[-3:] == [4, 4, 4]


def test_validation_batches_keep_order_and_the_last_partial_batch():
    images = np.arange(10, dtype=np.uint8).repeat(48 * 48).reshape(10, 48, 48)
    batches = augmentation.make_dataset(images, np.zeros(10, int), 7, 4, training=False)
    assert len(batches) == 3
    np.testing.assert_array_equal(np.concatenate([batches[i][0] for i in range(3)]), to_model_input(images))


@pytest.mark.parametrize("name", ["vgg", "seed_cnn", "vgg_small", "lite", "lite_wide"])
def test_architectures_normalise_inside(name):
    model = build_model(name, num_classes=5)
    assert isinstance(model.layers[1], keras.layers.Rescaling) and model.layers[1].scale == pytest.approx(1 / 255)
    assert model.output_shape == (None, 5)
    probabilities = model.predict(np.zeros((2, 48, 48, 1), "float32"), verbose=0)
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9'"):
        build_model("resnet9")


# Trained models come in mixed precision, or in float32 with the training-only fused BatchNorm.
@pytest.mark.parametrize("precision, fused", [("mixed_bfloat16", False), ("float32", True)])
def test_saved_model_loads_in_plain_keras(tmp_path, precision, fused):
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_model("vgg_small")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = with_fused_batchnorm(model) if fused else model
    model.set_weights([w + np.random.default_rng(1).normal(0, 0.01, w.shape) for w in model.get_weights()])
    files = save_model(model, tmp_path / "fer", ModelMeta(architecture="vgg_small"))
    assert json.loads(files["meta"].read_text())["class_names"][3] == "happy"
    assert "bfloat16" not in files["json"].read_text() and "Fused" not in files["json"].read_text()
    faces = np.random.default_rng(2).integers(0, 256, (4, 48, 48, 1)).astype("float32")
    np.save(tmp_path / "faces.npy", faces)
    ours, _ = load_model(tmp_path / "fer")
    np.save(tmp_path / "ours.npy", ours.predict(faces, verbose=0))
    result = run_python("""
        import sys, numpy as np, keras
        model = keras.models.model_from_json(open("fer.json").read())
        model.load_weights("fer.h5")
        np.save("plain.npy", model.predict(np.load("faces.npy"), verbose=0))
        assert not any(m.startswith("ferkit") for m in sys.modules), "ferkit was imported"
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "ours.npy"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fused_batchnorm_trains_exactly_like_the_built_in_layer(precision):
    """Same outputs, gradients and moving statistics as keras.layers.BatchNormalization, only faster."""
    keras.mixed_precision.set_global_policy(precision)
    try:
        built_in = keras.Sequential([keras.Input((6, 6, 5)), keras.layers.BatchNormalization(momentum=0.9)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    fused = with_fused_batchnorm(built_in)
    assert type(fused.layers[0]).__name__ == "FusedBatchNormalization"
    rng = np.random.default_rng(0)
    built_in.set_weights([rng.uniform(0.5, 2, 5), rng.normal(0, 1, 5), np.zeros(5), np.ones(5)])
    fused.set_weights(built_in.get_weights())
    x = tf.constant(rng.normal(3, 2, (8, 6, 6, 5)), tf.float32)
    upstream = tf.constant(rng.normal(0, 1, (8, 6, 6, 5)), tf.float32)
    results = []
    for model in (built_in, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_sum(y * upstream)
        gradients = tape.gradient(loss, [x] + model.trainable_weights)
        results.append([y] + gradients + [model.layers[0].moving_mean, model.layers[0].moving_variance,
                                          tf.cast(model(x, training=False), tf.float32)])
    names = ["outputs", "d inputs", "d gamma", "d beta", "moving mean", "moving variance", "inference"]
    for name, ours, theirs in zip(names, results[1], results[0]):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), err_msg=name,
                                   rtol=2e-2 if precision != "float32" and name == "outputs" else 1e-4, atol=1e-4)


def test_load_model_without_files_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m ferkit train"):
        load_model(tmp_path / "fer")


def test_training_starts_from_init_weights(cartoon, tmp_path):
    source = build_model("vgg_small")
    stage1 = {"command": "python -m ferkit train --epochs 45", "best_epoch": 45}
    save_model(source, tmp_path / "stage1" / "fer", ModelMeta(architecture="vgg_small", training=stage1))
    # A learning rate too small to move anything: the result must still be the source's weights.
    config = training.TrainConfig(architecture="vgg_small", epochs=1, batch_size=32, warmup_epochs=0,
                                  learning_rate=1e-12, weight_decay=0.0, precision="float32",
                                  init_weights=str(tmp_path / "stage1" / "fer"))
    result = training.train(cartoon, config, out=tmp_path / "stage2" / "fer", checkpoint_dir=tmp_path / "ck",
                            verbose=0)
    kernel = result.model.get_layer("stage1a_conv").kernel.numpy()
    np.testing.assert_allclose(kernel, source.get_layer("stage1a_conv").kernel.numpy(), atol=1e-6)
    recorded = json.loads((tmp_path / "stage2" / "fer.meta.json").read_text())["training"]
    assert recorded["config"]["init_weights"].endswith("fer")
    assert recorded["init_weights_training"] == stage1  # how the starting model was made travels along


def test_second_stage_changes_only_the_schedule_and_geometry():
    first = training.TrainConfig(architecture="vgg_small", epochs=45, seed=3, threshold_accuracy=0.75,
                                 threshold_val_accuracy=0.71, class_weight="balanced",
                                 augmentation=augmentation.Augmentation(shift=0.05, erase_probability=0.1))
    second = first.second_stage("checkpoints/v2/fer", epochs=30)
    assert (second.epochs, second.init_weights) == (30, "checkpoints/v2/fer")
    assert second.learning_rate < first.learning_rate
    assert second.augmentation.rotation_degrees < first.augmentation.rotation_degrees
    assert second.augmentation.zoom < first.augmentation.zoom
    unchanged = {"learning_rate", "warmup_epochs", "epochs", "init_weights", "augmentation"}
    assert {k: v for k, v in asdict(second).items() if k not in unchanged} == {
        k: v for k, v in asdict(first).items() if k not in unchanged}
    assert (second.augmentation.shift, second.augmentation.erase_probability) == (0.05, 0.1)
    assert first.epochs == 45 and first.init_weights is None  # the first stage's config is left alone
    assert first.second_stage("m").epochs == 45


def test_init_weights_of_another_shape_explains(tmp_path):
    save_model(build_model("vgg_small", num_classes=5), tmp_path / "fer5",
               ModelMeta(class_names=["a", "b", "c", "d", "e"], architecture="vgg_small"))
    with pytest.raises(ValueError, match="fer5: its weights do not fit a vgg with 7 classes.*5 classes"):
        finetune.load_initial_weights(build_model("vgg"), tmp_path / "fer5")


def test_ensemble_averages_members_and_loads_in_plain_keras(cartoon, tmp_path, capsys):
    from ferkit import data
    from ferkit.cli import main

    members = []
    for seed in (1, 2):  # the same architecture twice: the members' layer names must not clash
        keras.utils.set_random_seed(seed)
        stem = tmp_path / f"m{seed}" / "fer"
        save_model(build_model("vgg_small"), stem, ModelMeta(architecture="vgg_small", training={"seed": seed}))
        members.append(str(stem))
    npz = data.write_npz(cartoon, tmp_path / "c.npz")
    assert main(["ensemble", *members, "--out", str(tmp_path / "avg"), "--data", str(npz), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    public = cartoon.split("PublicTest")
    member_probabilities = [predict_probabilities(load_model(m)[0], public.images) for m in members]
    expected = (member_probabilities[0] + member_probabilities[1]) / 2
    assert f"average of 2: PublicTest accuracy {(expected.argmax(1) == public.labels).mean():.4f}" in printed
    assert (f"{members[1]} (vgg_small): PublicTest accuracy "
            f"{(member_probabilities[1].argmax(1) == public.labels).mean():.4f}") in printed
    np.save(tmp_path / "faces.npy", to_model_input(public.images))
    result = run_python("""
        import numpy as np, keras
        model = keras.models.model_from_json(open("avg.json").read())
        model.load_weights("avg.h5")
        np.save("plain.npy", model.predict(np.load("faces.npy"), verbose=0))
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "plain.npy"), expected, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "avg.meta.json").read_text())
    assert meta["architecture"] == "average(vgg_small,vgg_small)"
    assert [m["training"] for m in meta["training"]["members"]] == [{"seed": 1}, {"seed": 2}]
    assert meta["training"]["command"].startswith("python -m ferkit ensemble")


def test_an_average_given_as_a_member_counts_as_its_networks(tmp_path):
    from ferkit.model import average_models

    faces = np.random.default_rng(0).uniform(0, 255, (16, 48, 48, 1)).astype("float32")
    networks = []
    for seed, architecture in ((1, "vgg_small"), (2, "vgg"), (3, "vgg_small")):
        keras.utils.set_random_seed(seed)
        network = build_model(architecture)
        save_model(network, tmp_path / f"n{seed}", ModelMeta(architecture=architecture, training={"seed": seed}))
        networks.append(network)
    pair, pair_meta = average_models([tmp_path / "n1", tmp_path / "n2"])
    save_model(pair, tmp_path / "pair", pair_meta)
    triple, meta = average_models([tmp_path / "pair", tmp_path / "n3"])
    # Equal weights, a third each: not the pair's mean averaged with n3 (1/4, 1/4, 1/2).
    expected = np.mean([n.predict(faces, verbose=0) for n in networks], axis=0)
    np.testing.assert_allclose(triple.predict(faces, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert meta.architecture == "average(vgg_small,vgg,vgg_small)"
    assert [m["training"] for m in meta.training["members"]] == [{"seed": 1}, {"seed": 2}, {"seed": 3}]
    assert [m["model"] for m in meta.training["members"]] == [str(tmp_path / f"n{i}") for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="n2: holds the same network as .*pair"):
        average_models([tmp_path / "pair", tmp_path / "n2"])


def test_ensemble_rejects_members_that_disagree(tmp_path):
    from ferkit.model import average_models

    save_model(build_model("vgg_small"), tmp_path / "fer7", ModelMeta(architecture="vgg_small"))
    save_model(build_model("vgg_small", num_classes=5), tmp_path / "fer5",
               ModelMeta(class_names=["a", "b", "c", "d", "e"], architecture="vgg_small"))
    with pytest.raises(ValueError, match="fer5: class_names .* differs from .*fer7's"):
        average_models([tmp_path / "fer7", tmp_path / "fer5"])
    with pytest.raises(ValueError, match="at least two networks, got 1"):
        average_models([tmp_path / "fer7"])


def test_init_weights_from_an_ensemble_take_the_member_of_that_architecture(tmp_path):
    from ferkit.model import average_models

    keras.utils.set_random_seed(4)
    small, large = build_model("vgg_small"), build_model("vgg")
    save_model(small, tmp_path / "small", ModelMeta(architecture="vgg_small", training={"stage": "small"}))
    save_model(large, tmp_path / "large", ModelMeta(architecture="vgg", training={"stage": "large"}))
    averaged, averaged_meta = average_models([tmp_path / "small", tmp_path / "large"])
    save_model(averaged, tmp_path / "avg", averaged_meta)
    for fresh, source, stage in ((build_model("vgg"), large, "large"), (build_model("vgg_small"), small, "small")):
        meta = finetune.load_initial_weights(fresh, tmp_path / "avg")
        assert (meta.architecture, meta.training) == (source.name, {"stage": stage})
        for ours, theirs in zip(fresh.get_weights(), source.get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="avg: none of its members \\(vgg_small, vgg, with 7 classes\\) fits a seed_cnn"):
        finetune.load_initial_weights(build_model("seed_cnn"), tmp_path / "avg")


def test_member_picks_that_network_of_an_average(tmp_path):
    from ferkit.model import average_models

    keras.utils.set_random_seed(5)
    networks = [build_model("vgg_small"), build_model("vgg_small"), build_model("lite")]
    for index, network in enumerate(networks, start=1):
        save_model(network, tmp_path / f"n{index}", ModelMeta(architecture=network.name, training={"n": index}))
    averaged, averaged_meta = average_models([tmp_path / "n1", tmp_path / "n2", tmp_path / "n3"])
    save_model(averaged, tmp_path / "avg", averaged_meta)
    for member, expected in ((None, 0), (1, 0), (2, 1)):
        fresh = build_model("vgg_small")
        meta = finetune.load_initial_weights(fresh, tmp_path / "avg", member)
        assert meta.training == {"n": expected + 1}
        for ours, theirs in zip(fresh.get_weights(), networks[expected].get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="avg: member 3 is a lite; train with --architecture lite"):
        finetune.load_initial_weights(build_model("vgg_small"), tmp_path / "avg", 3)
    with pytest.raises(ValueError, match="avg: member 4 does not exist; it holds 3 networks"):
        finetune.load_initial_weights(build_model("vgg_small"), tmp_path / "avg", 4)
    with pytest.raises(ValueError, match="n1: member 2 does not exist; it holds 1 network "):
        finetune.load_initial_weights(build_model("vgg_small"), tmp_path / "n1", 2)


def test_interpolate_blends_a_fine_tuned_network_with_the_member_it_started_from(cartoon, tmp_path, capsys):
    from ferkit import data
    from ferkit.cli import main
    from ferkit.model import average_models

    keras.utils.set_random_seed(6)
    start, other, tuned = build_model("vgg_small"), build_model("lite"), build_model("vgg_small")
    for name, network, stage in (("start", start, 1), ("other", other, 0), ("tuned", tuned, 2)):
        save_model(network, tmp_path / name, ModelMeta(architecture=network.name, training={"stage": stage}))
    averaged, averaged_meta = average_models([tmp_path / "other", tmp_path / "start"])
    save_model(averaged, tmp_path / "avg", averaged_meta)
    npz = data.write_npz(cartoon, tmp_path / "c.npz")
    assert main(["interpolate", str(tmp_path / "tuned"), str(tmp_path / "avg"), "--member", "2", "--alpha", "0.25",
                 "--out", str(tmp_path / "blend"), "--data", str(npz), "--no-progress"]) == 0
    blend, meta = load_model(tmp_path / "blend")
    for ours, first, second in zip(blend.get_weights(), start.get_weights(), tuned.get_weights()):
        np.testing.assert_allclose(ours, 0.75 * first + 0.25 * second, rtol=1e-6, atol=1e-7)
    assert meta.training["interpolation"] == {"start": str(tmp_path / "avg"), "member": 2,
                                              "finetuned": str(tmp_path / "tuned"), "alpha": 0.25}
    assert (meta.training["start_training"], meta.training["finetuned_training"]) == ({"stage": 1}, {"stage": 2})
    assert meta.training["command"].startswith("python -m ferkit interpolate")
    printed = capsys.readouterr().out
    public = cartoon.split("PublicTest")
    for label, network in ((f"start, {tmp_path / 'avg'} member 2", start), (f"fine-tuned, {tmp_path / 'tuned'}", tuned),
                           ("blend, alpha 0.25", blend)):
        accuracy = (predict_probabilities(network, public.images).argmax(1) == public.labels).mean()
        assert f"{label}: PublicTest accuracy {accuracy:.4f}" in printed

    # A stage blended with the network it was trained from: that network's record is stored once, in the stage's.
    save_model(tuned, tmp_path / "stage", ModelMeta(architecture="vgg_small",
                                                    training={"stage": 2, "init_weights_training": {"stage": 1}}))
    again = finetune.interpolate_weights(tmp_path / "stage", tmp_path / "start", 0.5)
    assert "start_training" not in again.meta.training
    assert again.meta.training["finetuned_training"]["init_weights_training"] == {"stage": 1}
    for ours, first, second in zip(again.model.get_weights(), again.start.get_weights(), again.finetuned.get_weights()):
        np.testing.assert_allclose(ours, 0.5 * first + 0.5 * second, rtol=1e-6, atol=1e-7)
    assert all(np.array_equal(ours, theirs) for ours, theirs in zip(again.start.get_weights(), start.get_weights()))

    with pytest.raises(ValueError, match="alpha 1.5: must be between 0"):
        finetune.interpolate_weights(tmp_path / "tuned", tmp_path / "start", 1.5)
    with pytest.raises(ValueError, match="other cannot be blended with .*tuned \\(a vgg_small\\); give the network "
                                         "it was fine-tuned from: .*do not fit a vgg_small"):
        finetune.interpolate_weights(tmp_path / "tuned", tmp_path / "other", 0.5)
    with pytest.raises(ValueError, match="avg: an average of 2 networks; blend one fine-tuned network at a time"):
        finetune.interpolate_weights(tmp_path / "avg", tmp_path / "start", 0.5)


# ---------------------------------------------------------------- resume and distribution

TRAIN_SCRIPT = """
    import os, sys
    import keras
    import ferkit.training
    from ferkit.sample import cartoon_faces
    from ferkit.training import TrainConfig, train

    # Patched where train() looks it up.
    def logged_dataset(*args, make_dataset=ferkit.training.make_dataset, **kwargs):
        # Prints "BATCH epoch index" for every training batch read, in the order it is read.
        batches = make_dataset(*args, **kwargs)
        if kwargs["training"]:
            read = type(batches).__getitem__
            type(batches).__getitem__ = lambda self, i: (print("BATCH", self.epoch, i), read(self, i))[1]
        return batches

    ferkit.training.make_dataset = logged_dataset

    class Crash(keras.callbacks.Callback):
        # A power cut after the given epoch: no cleanup, no exception handlers.
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == int(os.environ.get("CRASH_AFTER", "0")):
                os._exit(3)

    data = cartoon_faces(per_class_and_split=6, seed=0)
    config = TrainConfig(architecture="vgg_small", epochs=4, batch_size=int(os.environ.get("BATCH_SIZE", "32")),
                         warmup_epochs=0, precision="float32",
                         average_last=int(os.environ.get("AVERAGE_LAST", "0")))
    result = train(data, config, out="model/fer", checkpoint_dir="ck", verbose=0, extra_callbacks=[Crash()])
    print("BEST", result.best_epoch, len(result.history))
"""


def test_join_histories_runs_epochs_on_across_stages():
    first = [{"epoch": 0.0, "val_accuracy": 0.3}, {"epoch": 1.0, "val_accuracy": 0.4}]
    second = [{"epoch": e, "val_accuracy": 0.5 + e / 10} for e in (0.0, 1.0, 2.0)]
    joined = join_histories([first, second])
    assert [r["epoch"] for r in joined] == [0, 1, 2, 3, 4]
    assert [r["stage"] for r in joined] == [1, 1, 2, 2, 2]
    assert [r["val_accuracy"] for r in joined] == [0.3, 0.4, 0.5, 0.6, 0.7]  # rows keep their order and values
    assert join_histories([first]) == [{**r, "stage": 1} for r in first]


def test_training_resumes_after_a_kill(tmp_path):
    crashed = subprocess.run([sys.executable, "-c", textwrap.dedent(TRAIN_SCRIPT)], cwd=tmp_path,
                             env={**ENV, "CRASH_AFTER": "2"}, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    history = read_history(tmp_path / "ck" / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert not (tmp_path / "model" / "fer.h5").exists()

    resumed = run_python(TRAIN_SCRIPT, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    history = read_history(tmp_path / "ck" / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1, 2, 3]  # resumed at epoch 3, not from scratch
    best_epoch = int(resumed.stdout.split("BEST")[1].split()[0])
    assert best_epoch == 1 + int(max(history, key=lambda r: r["val_accuracy"])["epoch"])
    meta = json.loads((tmp_path / "model" / "fer.meta.json").read_text())
    assert meta["training"]["epochs_run"] == 4
    from ferkit.faces import low_contrast_settings
    from ferkit.sample import cartoon_faces

    # The low-contrast lift is measured on the images the model was trained on.
    training_images = cartoon_faces(per_class_and_split=6, seed=0).split("Training").images
    assert meta["face_low_contrast"] == low_contrast_settings(training_images)


def test_a_resumed_run_reads_the_batches_of_an_uninterrupted_one_in_the_same_order(tmp_path):
    (tmp_path / "straight").mkdir(), (tmp_path / "resumed").mkdir()
    straight = run_python(TRAIN_SCRIPT, tmp_path / "straight", BATCH_SIZE="8")
    assert run_python(TRAIN_SCRIPT, tmp_path / "resumed", BATCH_SIZE="8", CRASH_AFTER="2").returncode == 3
    resumed = run_python(TRAIN_SCRIPT, tmp_path / "resumed", BATCH_SIZE="8")
    assert straight.returncode == 0 and resumed.returncode == 0, resumed.stderr[-2000:]

    def batches_from_epoch_3(run):  # training epochs 3 and 4 read dataset epochs 3 and 4 (see above)
        read = [tuple(map(int, line.split()[1:])) for line in run.stdout.splitlines() if line.startswith("BATCH")]
        return [(epoch, index) for epoch, index in read if epoch >= 3]

    # 42 training images, batches of 8: 5 batches per epoch, whose order a resume must keep too.
    assert len(batches_from_epoch_3(straight)) == 10
    assert batches_from_epoch_3(resumed) == batches_from_epoch_3(straight)


def test_weight_averaging_resumes_after_a_kill_and_saves_the_better_candidate(tmp_path):
    crashed = run_python(TRAIN_SCRIPT, tmp_path, CRASH_AFTER="3", AVERAGE_LAST="3")
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    with np.load(tmp_path / "ck" / "average.npz") as saved:
        assert saved["epochs"].tolist() == [1, 2]  # epochs 2 and 3 of the last 3, 0-based

    resumed = run_python(TRAIN_SCRIPT, tmp_path, AVERAGE_LAST="3")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    with np.load(tmp_path / "ck" / "average.npz") as saved:
        assert saved["epochs"].tolist() == [1, 2, 3]  # epoch 4 added once, nothing counted twice
        average = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]
    recorded = json.loads((tmp_path / "model" / "fer.meta.json").read_text())["training"]["average"]
    assert (recorded["epochs"], recorded["count"]) == ([2, 4], 3)

    model, meta = load_model(tmp_path / "model" / "fer")
    from ferkit.sample import cartoon_faces
    public = cartoon_faces(per_class_and_split=6, seed=0).split("PublicTest")
    accuracy = (predict_probabilities(model, public.images).argmax(1) == public.labels).mean()
    # What was saved is the candidate that scored higher, with the score recorded for it.
    assert recorded["saved"] == (recorded["public_test_accuracy"] >= recorded["best_epoch_public_test_accuracy"])
    chosen = "public_test_accuracy" if recorded["saved"] else "best_epoch_public_test_accuracy"
    assert accuracy == pytest.approx(recorded[chosen])
    trainable = [i for i, w in enumerate(model.weights) if w.trainable]
    same_as_average = all(np.allclose(model.get_weights()[i], average[i], atol=1e-6) for i in trainable)
    assert same_as_average == recorded["saved"]


def test_two_logical_devices_train_under_mirrored_strategy(tmp_path):
    result = run_python("""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from ferkit.sample import cartoon_faces
        from ferkit.hardware import get_strategy
        from ferkit.training import TrainConfig, train
        strategy = get_strategy()
        print("STRATEGY", type(strategy).__name__, strategy.num_replicas_in_sync)
        config = TrainConfig(architecture="vgg_small", epochs=1, batch_size=16, warmup_epochs=0, precision="float32",
                             average_last=1)
        result = train(cartoon_faces(2), config, out="m/fer", checkpoint_dir="ck", verbose=0)
        print("EPOCHS", len(result.history), "AVERAGED", result.averaged["count"])
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STRATEGY MirroredStrategy 2" in result.stdout and "EPOCHS 1 AVERAGED 1" in result.stdout


def test_training_runs_under_jax_without_tensorflow_on_two_devices_and_loads_back(tmp_path):
    """The GPU machine this project trained on had JAX but no TensorFlow; this is that path, on CPU."""
    pytest.importorskip("jax")
    result = run_python("""
        import sys
        class NoTensorFlow:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "tensorflow":
                    raise ImportError("tensorflow is blocked in this test")
        sys.meta_path.insert(0, NoTensorFlow())
        import jax, keras
        from ferkit.sample import cartoon_faces
        from ferkit.training import TrainConfig, train
        config = TrainConfig(architecture="vgg_small", epochs=2, batch_size=16, warmup_epochs=0, precision="float32")
        result = train(cartoon_faces(2), config, out="m/fer", checkpoint_dir="ck", verbose=0)
        print("BACKEND", keras.backend.backend(), "DEVICES", len(jax.devices()), "DISTRIBUTION",
              type(keras.distribution.distribution()).__name__, "EPOCHS", len(result.history))
    """, tmp_path, KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BACKEND jax DEVICES 2 DISTRIBUTION DataParallel EPOCHS 2" in result.stdout
    # Saved under JAX, loaded here under TensorFlow: the same predictions as the JAX run's best epoch.
    model, meta = load_model(tmp_path / "m" / "fer")
    assert "Keras backend jax" in meta.training["hardware"]
    best = max(read_history(tmp_path / "ck" / "history.csv"), key=lambda r: r["val_accuracy"])
    from ferkit.sample import cartoon_faces

    val = cartoon_faces(2).split("PublicTest")
    accuracy = (predict_probabilities(model, val.images).argmax(1) == val.labels).mean()
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-6)


# ---------------------------------------------------------------- weight averaging


def _dense_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def test_weight_average_is_the_mean_of_the_epochs_from_start_on(tmp_path):
    model = _dense_model()
    rng = np.random.default_rng(0)
    snapshots = [[rng.normal(size=w.shape).astype("float32") for w in model.get_weights()] for _ in range(5)]
    averager = WeightAverage(start_epoch=2, path=tmp_path / "average.npz")
    averager.set_model(model)
    averager.on_train_begin()
    for epoch in range(4):
        model.set_weights(snapshots[epoch])
        averager.on_epoch_end(epoch)
    # A resumed run reloads the file and repeats epoch 3 (killed before its checkpoint): it must count once.
    resumed = WeightAverage(start_epoch=2, path=tmp_path / "average.npz")
    resumed.set_model(model)
    resumed.on_train_begin()
    for epoch in (3, 4):
        model.set_weights(snapshots[epoch])
        resumed.on_epoch_end(epoch)
    assert resumed.epochs == [2, 3, 4]
    for i, mean in enumerate(resumed.average):
        np.testing.assert_allclose(mean, np.mean([s[i] for s in snapshots[2:]], axis=0), rtol=1e-5, atol=1e-6)


def test_schedule_holds_the_averaging_rate_over_the_last_epochs():
    config = training.TrainConfig(epochs=10, learning_rate=0.02, warmup_epochs=1, average_last=4,
                                  average_learning_rate=0.004)
    rates = np.array([float(training.learning_rate_schedule(config, 10)(step)) for step in range(100)])
    assert rates[0] == pytest.approx(0.002) and rates[10] == pytest.approx(0.02)  # warm-up to the peak
    assert np.all(np.diff(rates[10:61]) < 0)  # cosine decay ...
    np.testing.assert_allclose(rates[60:], 0.004, rtol=1e-5)  # ... reaching the floor 4 epochs before the end
    default = replace(config, average_learning_rate=None)
    assert float(training.learning_rate_schedule(default, 10)(99)) == pytest.approx(0.005)  # a quarter of the peak
    assert float(training.learning_rate_schedule(replace(config, average_last=0), 10)(99)) < 1e-4
    assert training.learning_rate_schedule(replace(config, average_last=10), 10) == 0.004  # all epochs: constant


def test_recompute_batchnorm_sets_the_exact_statistics_of_the_data():
    inputs = keras.Input((4,))
    norm = keras.layers.BatchNormalization()
    model = keras.Model(inputs, keras.layers.Dense(2)(norm(inputs)))
    x = np.random.default_rng(0).normal([1, -2, 3, 0.5], [1, 2, 0.5, 3], size=(96, 4)).astype("float32")
    training.recompute_batchnorm(model, [(x[i:i + 32], np.zeros(32)) for i in range(0, 96, 32)])
    # Equal batches: the data's mean, and the mean of the three batch variances.
    np.testing.assert_allclose(norm.moving_mean.numpy(), x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), x.reshape(3, 32, 4).var(1).mean(0), rtol=1e-4)
    assert norm.momentum == 0.99  # the layer's own momentum is back for further training


# ---------------------------------------------------------------- evaluation


def test_confusion_matrix_and_scores():
    true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    matrix = evaluation.confusion_matrix(true, predicted, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    scores = evaluation.per_class_scores(matrix, ["a", "b", "c"])
    assert scores["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert scores["c"]["precision"] == 0.5 and scores["c"]["recall"] == 1.0


def test_evaluate_aligns_a_subset_model(cartoon):
    from ferkit.data import select_classes

    subset = select_classes(cartoon, "fer6")
    model = build_model("vgg_small", num_classes=6)
    meta = ModelMeta(class_names=list(subset.class_names), label_map=dict(subset.label_map))
    metrics = evaluation.evaluate(model, meta, cartoon, tta=True)
    assert metrics["PrivateTest"]["images"] == len(subset.split("PrivateTest"))
    assert sum(s["support"] for s in metrics["PrivateTest"]["per_class"].values()) == 28
    assert 0 <= metrics["PrivateTest"]["accuracy_tta"] <= 1


def test_train_and_evaluate_commands(cartoon, tmp_path, capsys):
    from ferkit.cli import main
    from ferkit.data import write_npz

    dataset = write_npz(cartoon, tmp_path / "faces.npz")
    argv = ["train", str(dataset), "--architecture", "vgg_small", "--epochs", "1", "--batch-size", "16",
            "--precision", "float32", "--out", str(tmp_path / "m" / "fer"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--no-progress", "--rotation", "7", "--zoom", "0.05", "--shift", "0.02", "--erase-probability", "0",
            "--weight-decay", "1e-4", "--label-smoothing", "0", "--learning-rate", "0.01", "--warmup-epochs", "0",
            "--blur-probability", "0.2", "--jpeg-probability", "0.1", "--light-probability", "0.15",
            "--gamma-probability", "0.25", "--low-resolution-probability", "0.05"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "m" / "fer.meta.json").read_text())
    # Every training option on the command line reaches the configuration that was trained and recorded.
    config = meta["training"]["config"]
    augmentation = {key: config["augmentation"][key] for key in ("rotation_degrees", "zoom", "shift", "erase_probability",
                                                                 "blur_probability", "jpeg_probability",
                                                                 "light_probability", "gamma_probability",
                                                                 "low_resolution_probability")}
    assert augmentation == {"rotation_degrees": 7.0, "zoom": 0.05, "shift": 0.02, "erase_probability": 0.0,
                            "blur_probability": 0.2, "jpeg_probability": 0.1, "light_probability": 0.15,
                            "gamma_probability": 0.25, "low_resolution_probability": 0.05}
    assert (config["weight_decay"], config["label_smoothing"], config["learning_rate"], config["warmup_epochs"]) == (
        1e-4, 0.0, 0.01, 0)
    assert meta["training"]["command"].startswith("python -m ferkit train ") and "--epochs 1" in meta["training"]["command"]
    assert meta["training"]["epochs_run"] == 1 and meta["training"]["train_seconds"] > 0

    # A second stage: the recipe's settings, except where an option is given.
    stage2 = ["train", str(dataset), "--architecture", "vgg_small", "--epochs", "1", "--batch-size", "16",
              "--precision", "float32", "--out", str(tmp_path / "m2" / "fer"), "--checkpoint-dir", str(tmp_path / "ck2"),
              "--no-progress", "--finetune-from", str(tmp_path / "m" / "fer"), "--zoom", "0.07",
              "--average-last", "1", "--average-learning-rate", "0.003"]
    assert main(stage2) == 0
    assert "weight average of epochs 1-1" in capsys.readouterr().out
    recorded = json.loads((tmp_path / "m2" / "fer.meta.json").read_text())["training"]
    expected = training.TrainConfig(architecture="vgg_small", epochs=1, batch_size=16, precision="float32",
                                    average_last=1, average_learning_rate=0.003)
    expected = expected.second_stage(tmp_path / "m" / "fer")
    expected.augmentation.zoom = 0.07
    assert recorded["config"] == json.loads(json.dumps(asdict(expected)))  # as JSON records it: tuples as lists
    assert recorded["init_weights_training"]["command"] == meta["training"]["command"]

    assert main(["evaluate", str(dataset), "--model", str(tmp_path / "m" / "fer"), "--results", str(tmp_path / "r"),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-dir", str(tmp_path / "missing")]) == 0
    out = capsys.readouterr().out
    assert "PrivateTest" in out and "per class" in out
    assert f"no {tmp_path / 'missing' / 'history.csv'}" in out  # a stage without history is named, not ignored
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["PrivateTest"]["images"] == 28 and metrics["training"]["command"] == meta["training"]["command"]
    assert (tmp_path / "r" / "confusion_matrix.png").exists() and (tmp_path / "r" / "training_curves.png").exists()


@pytest.mark.parametrize("name", ["lite", "lite_wide"])
def test_lite_students_are_compact(name):
    assert build_model(name).count_params() <= 1_500_000  # fer_lite's budget (issue: compact distilled model)


def test_lite_network_builds_any_stage_list():
    from ferkit.architectures import lite_network

    network = lite_network([(5, 4), (1, 8)], "candidate")  # bench_students.py's candidates may stack convolutions
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in network.layers) == 6
    assert network.output_shape == (None, 7)


def test_distillation_targets_mix_teacher_and_labels_and_are_cached(cartoon, tmp_path):
    teacher = build_model("vgg_small")
    save_model(teacher, tmp_path / "model" / "teacher", ModelMeta(architecture="vgg_small"))
    train_split = cartoon.split("Training")
    config = training.TrainConfig(teacher=str(tmp_path / "model" / "teacher"), teacher_weight=0.6)
    targets = finetune.teacher_targets(config, train_split, tmp_path)
    images = train_split.images
    expected_teacher = (teacher.predict(to_model_input(images), verbose=0)
                        + teacher.predict(to_model_input(images[:, :, ::-1]), verbose=0)) / 2
    one_hot = np.eye(7)[train_split.labels]
    np.testing.assert_allclose(targets, 0.6 * expected_teacher + 0.4 * one_hot, atol=1e-5)
    np.testing.assert_allclose(targets.sum(1), 1, atol=1e-5)
    # A resumed run takes the cached outputs: the teacher's files are no longer needed.
    for path in (tmp_path / "model").iterdir():
        path.unlink()
    np.testing.assert_allclose(finetune.teacher_targets(config, train_split, tmp_path), targets)
    with pytest.raises(ValueError, match="do not fit"):
        finetune.teacher_targets(config, cartoon.limit(2).split("Training"), tmp_path)
    with pytest.raises(ValueError, match="holds the outputs of teacher"):  # another teacher, same folder
        finetune.teacher_targets(replace(config, teacher="other"), train_split, tmp_path)


def test_distill_trains_a_student_that_keeps_the_teachers_crop(cartoon, tmp_path):
    from ferkit import data

    save_model(build_model("vgg_small"), tmp_path / "teacher",
               ModelMeta(architecture="vgg_small", face_margin=-0.05, face_offset=0.02, face_align=True,
                         face_low_contrast={"below_std": 20.0, "mean": 120.0, "std": 50.0}))
    npz = data.write_npz(cartoon, tmp_path / "c.npz")
    result = subprocess.run([sys.executable, "-m", "ferkit", "distill", str(npz), "--teacher",
                             str(tmp_path / "teacher"), "--epochs", "1", "--batch-size", "32", "--no-progress",
                             "--out", str(tmp_path / "student"), "--checkpoint-dir", str(tmp_path / "ck")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    student, meta = load_model(tmp_path / "student")
    assert meta.architecture == "lite" and student.count_params() == build_model("lite").count_params()
    assert (meta.face_margin, meta.face_offset, meta.face_align) == (-0.05, 0.02, True)
    assert meta.face_low_contrast == {"below_std": 20.0, "mean": 120.0, "std": 50.0}
    assert meta.training["config"]["teacher"] == str(tmp_path / "teacher")
    assert (tmp_path / "ck" / "teacher.npz").exists()
