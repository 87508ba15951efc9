"""The hardware training runs on: the accelerators the Keras backend sees, the precision, the distribution strategy.

Any Keras backend (TensorFlow, JAX, PyTorch); one GPU, several, a TPU or CPUs.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

# Keras and the backends are imported where asked about: importing ferkit must stay fast.


def accelerators() -> list[tuple[str, float]]:
    """(name, compute capability) of each GPU the Keras backend sees; capability 0 where unknown."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        details = [tf.config.experimental.get_device_details(g) for g in tf.config.list_physical_devices("GPU")]
        return [(d.get("device_name", "GPU"), float("%d.%d" % d.get("compute_capability", (0, 0)))) for d in details]
    if backend == "jax":
        import jax

        return [(d.device_kind, float(getattr(d, "compute_capability", 0) or 0))
                for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return [(torch.cuda.get_device_name(i), float("%d.%d" % torch.cuda.get_device_capability(i)))
                for i in range(torch.cuda.device_count())]
    return []


#: The Keras dtype policy of each precision ``train --precision`` offers besides "auto".
PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def choose_precision(requested: str = "auto") -> str:
    """The Keras dtype policy to train with: bf16 where the hardware has fast bf16."""
    if requested != "auto":
        return PRECISION_POLICIES[requested]
    gpus = accelerators()
    if gpus:
        return "mixed_bfloat16" if gpus[0][1] >= 8 else "mixed_float16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


class _NoStrategy:
    """Stands in for a ``tf.distribute`` strategy outside TensorFlow: a ``scope()`` that does nothing."""

    def __init__(self, num_replicas_in_sync: int = 1):
        self.num_replicas_in_sync = num_replicas_in_sync

    def scope(self):
        return contextlib.nullcontext()


def get_strategy():
    """Where to build the model: an object whose ``scope()`` the model and optimizer are created in.

    TensorFlow: a ``tf.distribute`` strategy, TPUStrategy on a TPU,
    MirroredStrategy over several GPUs (or logical CPUs), else the default.
    JAX with several devices: Keras's ``DataParallel`` distribution is set,
    which splits each batch across them, and the scope does nothing. Either
    way ``num_replicas_in_sync`` says over how many devices a batch is split.
    """
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = len(jax.devices())
        if devices > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel())
        return _NoStrategy(devices)
    if keras.backend.backend() != "tensorflow":
        return _NoStrategy()
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, ImportError, tf.errors.NotFoundError):
        pass
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if not gpus and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([c.name for c in cpus])
    return tf.distribute.get_strategy()


def describe_hardware() -> str:
    """What a model was trained on, for its metadata: the GPUs, else the CPU, and the Keras backend."""
    import keras

    gpus = [name for name, _ in accelerators()]
    where = ", ".join(gpus) if gpus else f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"
    return f"{where} (Keras backend {keras.backend.backend()})"
