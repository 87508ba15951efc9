"""The network builders: CNN architectures for 48x48 grayscale faces, built by name.

Every network takes uint8-range pixels of shape (S, S, 1) and normalises them
itself (a ``Rescaling`` layer), so training and inference cannot disagree on
it. Only built-in Keras layers are used, so a saved model (:mod:`ferkit.model`)
loads in a plain Keras 3 process with no ferkit import. Training may swap in
:class:`FusedBatchNormalization` (:func:`with_fused_batchnorm`); saved files
never carry it (:func:`float32_copy`).
"""

from __future__ import annotations

from ferkit import portable
from ferkit.settings import CLASS_NAMES, IMAGE_SIZE


def _keras():
    # Keras is imported where a network is built: importing ferkit must stay fast.
    return portable.import_keras()


def _conv_bn_relu(x, filters, kernel=3, name=None):
    layers = _keras().layers
    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _classifier_head(x, num_classes):
    # Softmax in float32 so mixed-precision training keeps stable probabilities.
    return _keras().layers.Activation("softmax", dtype="float32", name="probabilities")(
        _keras().layers.Dense(num_classes, name="logits")(x))


def seed_cnn(num_classes: int = 7, input_size: int = IMAGE_SIZE):
    """The classic FER-2013 notebook CNN: 4 conv blocks (64-128-512-512) and 2 dense layers, ~4.5M parameters."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for i, (filters, kernel) in enumerate([(64, 3), (128, 5), (512, 3), (512, 3)]):
        x = _conv_bn_relu(x, filters, kernel, name=f"block{i + 1}")
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{i + 1}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate([256, 512]):
        x = layers.Dense(units, use_bias=False, name=f"fc{i + 1}")(x)
        x = layers.BatchNormalization(name=f"fc{i + 1}_bn")(x)
        x = layers.Activation("relu", name=f"fc{i + 1}_relu")(x)
        x = layers.Dropout(0.25, name=f"fc{i + 1}_drop")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name="seed_cnn")


def vgg(num_classes: int = 7, input_size: int = IMAGE_SIZE, widths=(48, 96, 192, 384), dense: int = 256,
        stage_dropout: float = 0.05, dense_dropout: float = 0.5, name: str = "vgg"):
    """VGG-style net: 4 stages of two 3x3 conv-BN-ReLU, max-pooling, dropout; then a small dense head.

    Two 3x3 convolutions per stage see as far as a 5x5 at lower cost, BatchNorm
    lets a high learning rate work, and the modest widths keep an epoch cheap on
    a CPU, where FER-2013's 28k images make capacity beyond a few million
    parameters overfit before it helps.
    """
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for stage, filters in enumerate(widths, start=1):
        x = _conv_bn_relu(x, filters, name=f"stage{stage}a")
        x = _conv_bn_relu(x, filters, name=f"stage{stage}b")
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
        # Deeper stages hold more parameters per activation, so they get more dropout.
        x = layers.Dropout(stage_dropout * (stage + 2), name=f"stage{stage}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense, use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.Activation("relu", name="fc_relu")(x)
    x = layers.Dropout(dense_dropout, name="fc_drop")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name=name)


def vgg_small(num_classes: int = 7, input_size: int = IMAGE_SIZE):
    """A quarter-cost ``vgg`` (widths 32-64-128-256, 1.5M parameters): the default on a CPU budget.

    Lighter dropout than ``vgg``: with this few parameters, ``vgg``'s rates
    left the network underfitting (training accuracy below PublicTest's).
    """
    return vgg(num_classes, input_size, widths=(32, 64, 128, 256), dense=128, stage_dropout=0.025,
               dense_dropout=0.3, name="vgg_small")


def lite_network(stages, name: str, num_classes: int = 7, input_size: int = IMAGE_SIZE):
    """A ``lite``-shaped network: ``stages`` lists (convolutions, filters) per resolution, each ending in a 2x pool."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((input_size, input_size, 1), name="face")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for stage, (convs, filters) in enumerate(stages, start=1):
        for conv in range(convs):
            x = _conv_bn_relu(x, filters, name=f"stage{stage}{chr(ord('a') + conv)}")
        x = layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
        x = layers.Dropout(0.025 * (stage + 2), name=f"stage{stage}_drop")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(name="fc_bn")(x)
    x = layers.Activation("relu", name="fc_relu")(x)
    x = layers.Dropout(0.3, name="fc_drop")(x)
    return keras.Model(inputs, _classifier_head(x, num_classes), name=name)


def lite(num_classes: int = 7, input_size: int = IMAGE_SIZE):
    """The compact student of ``python -m ferkit distill`` (0.8M parameters, about 5x the average's speed at batch 1).

    At batch 1 a network's time goes mostly to its full-resolution layers and
    to the per-layer overhead, so this keeps one narrow convolution at 48x48,
    one at 24x24, and spends its depth at 12x12, where a layer costs little.
    """
    return lite_network([(1, 16), (1, 64), (2, 128), (1, 256)], "lite", num_classes, input_size)


def lite_wide(num_classes: int = 7, input_size: int = IMAGE_SIZE):
    """``lite`` with wider 12x12 and 6x6 layers (160 and 320 filters; 1.17M parameters).

    Widening where the feature maps are small adds capacity at little cost at
    batch 1; ``benchmarks/bench_students.py`` times it against the average
    and the other candidates (docs/experiments/fer_lite-distillation.md).
    """
    return lite_network([(1, 16), (1, 64), (2, 160), (1, 320)], "lite_wide", num_classes, input_size)


ARCHITECTURES = {"vgg": vgg, "seed_cnn": seed_cnn, "vgg_small": vgg_small, "lite": lite, "lite_wide": lite_wide}
# The best measured accuracy per CPU-hour: 70.9% PrivateTest after three stages (4.9 h on 2 cores) where vgg
# reached 68.2% in 4.6 h. Given 400 epochs on a GPU, vgg did better (71.25% vs 70.49% PublicTest,
# docs/experiments/shipped-average.md), but the default stays what a CPU user can afford.
DEFAULT_ARCHITECTURE = "vgg_small"


def build_model(name: str = DEFAULT_ARCHITECTURE, num_classes: int = len(CLASS_NAMES), input_size: int = IMAGE_SIZE):
    """Build an architecture from :data:`ARCHITECTURES` by name (uncompiled)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](num_classes=num_classes, input_size=input_size)


def _fused_batchnorm_class():
    """``FusedBatchNormalization``, defined on first use so that importing ferkit does not import Keras."""
    global _FusedBatchNormalization
    if _FusedBatchNormalization is not None:
        return _FusedBatchNormalization
    keras = _keras()

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        """Keras's BatchNormalization, trained with TensorFlow's fused kernel: same weights, same results.

        Keras 3 normalises with separate mean, variance and arithmetic ops in
        float32, about a third of a ``vgg_small`` training step on a CPU;
        TensorFlow's one fused op does the same work in a fraction of the time
        (``benchmarks/bench_training.py``, "built-in BatchNorm"). For training
        under TensorFlow only: saved models are rebuilt with the built-in layer
        (``save_model``), so the files stay plain Keras. Inference and anything it does not cover
        (masks, renorm, other than NHWC) take the built-in path.
        """

        def call(self, inputs, training=None, mask=None):
            if (not (training and self.trainable) or mask is not None or self.renorm or len(inputs.shape) != 4
                    or self.axis not in (-1, 3) or not (self.scale and self.center)):
                return super().call(inputs, training=training, mask=mask)
            import tensorflow as tf

            outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, is_training=True, data_format="NHWC")
            # The fused op returns the Bessel-corrected batch variance; Keras averages the plain one.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], unbiased_variance.dtype)
            variance = unbiased_variance * (count - 1) / count
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return tf.cast(outputs, self.compute_dtype)

    _FusedBatchNormalization = FusedBatchNormalization
    return FusedBatchNormalization


_FusedBatchNormalization = None


def with_fused_batchnorm(model):
    """A copy of ``model`` (weights included) whose BatchNormalization layers train with the fused kernel.

    TensorFlow backend only; see ``FusedBatchNormalization``. ``save_model``
    turns the copy back into built-in layers.
    """
    keras = _keras()
    fused = _fused_batchnorm_class()

    def clone(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return fused.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def has_training_only_layers(model) -> bool:
    """Whether ``model`` holds layers only training uses (``FusedBatchNormalization``), which files must not carry."""
    return _FusedBatchNormalization is not None and any(
        isinstance(layer, _FusedBatchNormalization) for layer in model.layers)


def float32_copy(model, architecture: str, num_classes: int, input_size: int = IMAGE_SIZE):
    """A float32 ``architecture`` holding ``model``'s weights, outside any mixed-precision policy or strategy."""
    keras = _keras()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = build_model(architecture, num_classes, input_size)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy
