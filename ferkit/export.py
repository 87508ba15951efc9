"""ferkit models as ONNX, for ONNX Runtime in a browser page or any other runtime.

The ONNX graph is written directly from the Keras layers rather than through
a converter: ferkit's networks are plain chains of Rescaling, Conv2D,
BatchNormalization, ReLU, max-pooling, Flatten and Dense (an average adds a
``Mean`` over its members), so each layer maps onto one or two ONNX
operators, BatchNormalization is folded into the convolution or dense layer
before it, and nothing depends on which TensorFlow/Keras a converter
happens to support. Input and output keep the Keras layout: ``face``
(N, S, S, 1) float32 pixels 0-255 in, ``probabilities`` (N, classes) out.

    from ferkit.export import export_onnx
    export_onnx("fer")                      # writes fer.onnx (the working directory, for a shipped model)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ferkit import files
from ferkit.model import SHIPPED_MODELS, load_model, networks_of, resolve_model

# onnx is imported where a graph is built: the command line and the server import this module and must start fast.

OPSET = 17


class ExportError(ValueError):
    """The model holds a layer this exporter does not translate; the message names it."""


def export_onnx(model: str | Path | None = None, output: str | Path | None = None, *,
                float16_weights: bool = False) -> Path:
    """Write ``model`` (stem or path; default the shipped model) as ONNX; returns the file written.

    ``output`` defaults to the model's stem with ``.onnx``, beside its
    ``.meta.json`` (class names and crop settings travel with it); for a
    shipped model, NAME.onnx in the working directory (never inside the
    installed package). ``float16_weights``: the weights stored as float16,
    half the bytes to download (see :func:`with_float16_weights`).
    """
    stem = resolve_model(model)
    keras_model, meta = load_model(stem)
    graph = onnx_graph(keras_model, meta, stem)
    if float16_weights:
        graph = with_float16_weights(graph)
    if output is None:
        output = Path(stem.name + ".onnx") if stem.parent == SHIPPED_MODELS else stem.with_suffix(".onnx")
    output = Path(output)
    return files.write_bytes(output, graph.SerializeToString())


def onnx_graph(keras_model, meta, path="model"):
    """The ONNX ``ModelProto`` computing ``keras_model``'s probabilities (see the module docstring)."""
    import onnx
    from onnx import TensorProto, helper

    builder = _Builder()
    size = meta.input_size
    members = [network for network, _ in networks_of(keras_model, meta, path)]
    outputs = [builder.chain(network, "face", prefix=f"m{i}_" if len(members) > 1 else "")
               for i, network in enumerate(members)]
    if len(outputs) > 1:
        builder.node("Mean", outputs, "probabilities")
    else:
        builder.node("Identity", outputs, "probabilities")
    classes = len(meta.class_names)
    graph = helper.make_graph(
        builder.nodes, "ferkit",
        [helper.make_tensor_value_info("face", TensorProto.FLOAT, ["batch", size, size, 1])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ferkit", doc_string=f"{meta.architecture}: {', '.join(meta.class_names)}")
    model.ir_version = min(model.ir_version, 9)  # loadable by ONNX Runtime releases of the last two years
    onnx.checker.check_model(model)
    return model


def with_float16_weights(model, min_elements: int = 1024):
    """``model`` (an ONNX ``ModelProto``) with each float32 weight of ``min_elements`` or more stored as float16
    and cast back to float32 when the graph loads: half the file, float32 arithmetic unchanged (the runtime
    folds the casts into constants once). Rounding the weights moves FER-2013 PrivateTest accuracy by under 0.1
    points for the shipped models (docs/experiments/page-speed.md)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    casts, kept = [], []
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if tensor.data_type != TensorProto.FLOAT or array.size < min_elements:
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(array.astype(np.float16), tensor.name + "_float16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], name=tensor.name + "_cast",
                                      to=TensorProto.FLOAT))
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


class _Builder:
    """Accumulates ONNX nodes and weights while walking a chain of Keras layers."""

    def __init__(self):
        self.nodes, self.initializers, self._names = [], [], set()

    def name(self, base: str) -> str:
        name, n = base, 1
        while name in self._names:
            name, n = f"{base}_{n}", n + 1
        self._names.add(name)
        return name

    def weight(self, base: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes) -> str:
        from onnx import helper

        output = output or self.name(f"{op.lower()}")
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.name(f"{op}_node"), **attributes))
        return output

    def chain(self, network, source: str, prefix: str) -> str:
        """Emit ``network``'s layers in order from ``source`` (NHWC); returns the output's name."""
        layers = [layer for layer in network.layers if type(layer).__name__ != "InputLayer"]
        x, layout = source, "NHWC"
        i = 0
        while i < len(layers):
            layer, kind = layers[i], type(layers[i]).__name__
            following = layers[i + 1] if i + 1 < len(layers) else None
            fold = following if type(following).__name__ == "BatchNormalization" else None
            name = prefix + layer.name
            if kind == "Rescaling":
                scale, offset = np.float32(layer.scale), np.float32(layer.offset)
                x = self.node("Mul", [x, self.weight(f"{name}_scale", np.array(scale))])
                if offset:
                    x = self.node("Add", [x, self.weight(f"{name}_offset", np.array(offset))])
            elif kind == "Conv2D":
                if layout == "NHWC":
                    x, layout = self.node("Transpose", [x], perm=[0, 3, 1, 2]), "NCHW"
                x = self._conv(layer, fold, x, name)
                i += fold is not None
            elif kind == "Dense":
                x = self._dense(layer, fold, x, name)
                i += fold is not None
            elif kind == "BatchNormalization":
                x = self._batchnorm(layer, x, name, layout)
            elif kind == "Activation":
                x = self._activation(layer.get_config()["activation"], x, name)
            elif kind == "MaxPooling2D":
                if layer.padding != "valid":
                    raise ExportError(f"{name}: only 'valid' max-pooling is exported")
                x = self.node("MaxPool", [x], kernel_shape=list(layer.pool_size), strides=list(layer.strides))
            elif kind == "Dropout":
                pass  # inference: the identity
            elif kind == "Flatten":
                if layout == "NCHW":  # Keras flattens height, width, channels in that order
                    x, layout = self.node("Transpose", [x], perm=[0, 2, 3, 1]), "NHWC"
                x = self.node("Flatten", [x], axis=1)
                layout = "flat"
            else:
                raise ExportError(f"{name}: {kind} layers are not exported to ONNX; ferkit's architectures use "
                                  "Rescaling, Conv2D, BatchNormalization, Activation, MaxPooling2D, Dropout, "
                                  "Flatten and Dense")
            i += 1
        return x

    def _conv(self, layer, batchnorm, x, name):
        config = layer.get_config()
        kernel = layer.get_weights()[0]  # (kh, kw, in, out)
        bias = layer.get_weights()[1] if config["use_bias"] else np.zeros(kernel.shape[-1], np.float32)
        if tuple(config["dilation_rate"]) != (1, 1) or config["groups"] != 1:
            raise ExportError(f"{name}: dilated or grouped convolutions are not exported")
        kernel, bias = _fold(kernel, bias, batchnorm)
        kh, kw = kernel.shape[:2]
        strides = list(config["strides"])
        if config["padding"] == "same":
            if strides != [1, 1]:
                raise ExportError(f"{name}: 'same' padding is exported for stride 1 only")
            pads = [(kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2]
        else:
            pads = [0, 0, 0, 0]
        x = self.node("Conv", [x, self.weight(f"{name}_w", kernel.transpose(3, 2, 0, 1)), self.weight(f"{name}_b", bias)],
                      kernel_shape=[kh, kw], strides=strides, pads=pads)
        return self._activation(config["activation"], x, name)

    def _dense(self, layer, batchnorm, x, name):
        config = layer.get_config()
        kernel = layer.get_weights()[0]  # (in, out)
        bias = layer.get_weights()[1] if config["use_bias"] else np.zeros(kernel.shape[-1], np.float32)
        kernel, bias = _fold(kernel, bias, batchnorm)
        x = self.node("Gemm", [x, self.weight(f"{name}_w", kernel), self.weight(f"{name}_b", bias)])
        return self._activation(config["activation"], x, name)

    def _batchnorm(self, layer, x, name, layout):
        scale, shift = _batchnorm_affine(layer)
        shape = {"NCHW": [1, -1, 1, 1], "NHWC": [1, 1, 1, -1], "flat": [1, -1]}[layout]
        x = self.node("Mul", [x, self.weight(f"{name}_scale", scale.reshape(shape))])
        return self.node("Add", [x, self.weight(f"{name}_shift", shift.reshape(shape))])

    def _activation(self, activation, x, name):
        if activation in ("linear", None):
            return x
        if activation == "relu":
            return self.node("Relu", [x])
        if activation == "softmax":
            return self.node("Softmax", [x], axis=-1)
        raise ExportError(f"{name}: activation {activation!r} is not exported")


def _batchnorm_affine(layer) -> tuple[np.ndarray, np.ndarray]:
    """BatchNormalization at inference as ``x * scale + shift`` per channel."""
    config = layer.get_config()
    weights = layer.get_weights()
    gamma = weights.pop(0) if config["scale"] else 1.0
    beta = weights.pop(0) if config["center"] else 0.0
    mean, variance = weights
    scale = gamma / np.sqrt(variance + config["epsilon"])
    return np.asarray(scale, np.float32), np.asarray(beta - mean * scale, np.float32)


def _fold(kernel: np.ndarray, bias: np.ndarray, batchnorm) -> tuple[np.ndarray, np.ndarray]:
    """A convolution or dense layer followed by BatchNormalization, as one layer (output channels last)."""
    if batchnorm is None:
        return kernel, bias
    scale, shift = _batchnorm_affine(batchnorm)
    return kernel * scale, bias * scale + shift
