"""Training and inference throughput: ferkit's pipeline beside a naive Keras one, same run.

    python benchmarks/bench_training.py [--architectures vgg_small seed_cnn] [--steps 20] [--repeats 7] [--profile]

"ferkit": ferkit's input pipeline (``make_dataset``: a ``keras.utils.PyDataset``
augmenting each batch on the host with one affine transform per image), mixed
precision where the hardware has fast bf16 (``choose_precision``).
Its models train BatchNorm with TensorFlow's fused kernel, as ``train`` does
(``with_fused_batchnorm``). "ferkit in float32": the same without mixed
precision; "built-in BatchNorm": the same as ferkit with Keras's own
BatchNorm layer; together they separate what each change gives. "naive": the
same architecture with augmentation as Keras ``Random*`` layers inside the
model (flip, rotation, zoom, translation), float32.
The arms take turns: each round times one epoch of ``--steps`` steps of every
arm, one after the other, after one untimed warm-up epoch each (tracing). This
machine's speed swings by 2x within minutes (shared cores), so arms timed one
after the other in blocks measure the machine as much as the code; in turns,
each round's ratio compares arms run seconds apart. Images/second are medians
over ``--repeats`` rounds, and "ferkit / naive" is the median of the rounds'
ratios. "input alone" is ferkit's augmenting pipeline iterated without a
model: the most images/second it could feed.
``--profile`` then runs one more epoch of each ferkit arm under TensorFlow's
profiler and prints where the step's time goes, per kind of op: the share of
all op time (ops run two at a time on two cores, so shares are of the summed
op time, not of wall time).
Inference is the float32 model's forward pass compiled with tf.function, as
``Predictor`` runs it. Inputs are random 48x48 images: speed does not depend on
content.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from common import median_seconds


def timed_rounds(arms, steps, repeats, batch_size):
    """{name: [images/second per round]} for ``arms`` ({name: (model, dataset)}) timed in turns.

    One untimed warm-up epoch per arm first (tracing), then ``repeats`` rounds
    of one ``fit`` epoch of ``steps`` steps per arm.
    """
    from ferkit.callbacks import EpochTimer

    for model, dataset in arms.values():
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    rates = {name: [] for name in arms}
    for _ in range(repeats):
        for name, (model, dataset) in arms.items():
            history = model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[EpochTimer()])
            rates[name].append(steps * batch_size / history.history["epoch_seconds"][0])
    return rates


def timed_input(dataset, steps, repeats, batch_size):
    """Images/second of reading ``dataset``'s batches alone: the median of ``repeats`` epochs after a warm-up one."""
    def epoch():
        for index in range(steps):
            dataset[index]
        dataset.on_epoch_end()

    return steps * batch_size / median_seconds(epoch, repeats)


def op_kind(name: str) -> str:
    """The row of the profile table a TensorFlow op belongs to, from its ``scope/.../name:OpType``."""
    op_type = name.rsplit(":", 1)[-1]
    if "_drop" in name:
        return "dropout"
    for marker, kind in (("Conv2DBackpropFilter", "convolution, backward (weights)"),
                         ("Conv2DBackpropInput", "convolution, backward (inputs)"),
                         ("Conv2D", "convolution, forward"), ("BatchNorm", "BatchNorm (fused)"),
                         ("Relu", "ReLU"), ("MaxPool", "max-pooling")):
        if marker in op_type:
            return kind
    return "other (optimizer, casts, loss, dense layers, input)"


def profile_step(model, dataset, steps):
    """{op kind: milliseconds per step, summed over threads} over one ``fit`` epoch of ``steps`` steps (TensorFlow)."""
    import glob
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TensorFlow's own trace format

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]).read_bytes())
    totals = {}
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Op events are "scope/op_name:OpType"; the rest (executor, function calls) enclose them.
                if "/" in name and ":" in name:
                    kind = op_kind(name)
                    totals[kind] = totals.get(kind, 0.0) + event.duration_ps / 1e9 / steps
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=["vgg_small", "seed_cnn"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also print where a ferkit step's time goes, per op")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from ferkit.architectures import build_model, with_fused_batchnorm
    from ferkit.augmentation import Augmentation, make_dataset
    from ferkit.hardware import choose_precision

    rng = np.random.default_rng(0)
    # One timed epoch is exactly one pass over the images, as in real training.
    n = args.batch_size * args.steps
    images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, n)
    policy = choose_precision("auto")
    rows, profiles = [], {}
    for name in args.architectures:
        ours_ds = make_dataset(images, labels, 7, args.batch_size, training=True, augmentation=Augmentation())
        arms = {}
        # ferkit as train() runs it, then without bf16, then without the fused BatchNorm (setdefault: on a
        # machine without fast bf16 the first two are the same arm).
        for arm, precision, fused in ((policy, policy, True), ("float32", "float32", True),
                                      ("built-in BatchNorm", policy, False)):
            keras.mixed_precision.set_global_policy(precision)
            ours = with_fused_batchnorm(build_model(name)) if fused else build_model(name)
            ours.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
            arms.setdefault(arm, (ours, ours_ds))

        keras.mixed_precision.set_global_policy("float32")
        inner = build_model(name)
        inputs = keras.Input((48, 48, 1))
        x = keras.layers.RandomFlip("horizontal")(inputs)
        x = keras.layers.RandomRotation(15 / 360)(x)
        x = keras.layers.RandomZoom(0.15)(x)
        x = keras.layers.RandomTranslation(0.1, 0.1)(x)
        naive = keras.Model(inputs, inner(x))
        naive.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="categorical_crossentropy")
        naive_ds = tf.data.Dataset.from_tensor_slices(
            (images[..., None].astype("float32"), tf.one_hot(labels, 7))).batch(args.batch_size).repeat()
        arms["naive"] = (naive, naive_ds)

        rates = timed_rounds(arms, args.steps, args.repeats, args.batch_size)
        ratio = statistics.median(a / b for a, b in zip(rates[policy], rates["naive"]))
        ours_rate, ours_float32_rate, built_in_rate, naive_rate = (
            statistics.median(rates[k]) for k in (policy, "float32", "built-in BatchNorm", "naive"))
        input_rate = timed_input(ours_ds, args.steps, args.repeats, args.batch_size)

        float_model = build_model(name)
        # Inference as Predictor runs it: the forward pass compiled once with tf.function.
        forward = tf.function(lambda x, m=float_model: m(x, training=False),
                              input_signature=[tf.TensorSpec([None, 48, 48, 1], tf.float32)], autograph=False)
        batch1 = images[:1, ..., None].astype("float32")
        batch64 = images[:64, ..., None].astype("float32")
        infer = {}
        for label, batch, reps in (("1", batch1, 200), ("64", batch64, 20)):
            forward(batch)

            def calls(batch=batch, reps=reps):
                for _ in range(reps):
                    np.asarray(forward(batch))

            infer[label] = len(batch) * reps / median_seconds(calls, 5, warmup=False)
        if args.profile:
            profiles[name] = profile_step(*arms[policy], args.steps)
        rows.append((name, float_model.count_params(), ours_rate, ours_float32_rate, built_in_rate, naive_rate,
                     ratio, input_rate, infer["1"], infer["64"]))

    print(f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, TensorFlow {tf.__version__}, "
          f"ferkit precision {policy}, batch {args.batch_size}, median of {args.repeats} rounds x {args.steps} steps")
    print("| model | params | train img/s ferkit | ferkit in float32 | built-in BatchNorm | naive | ferkit / naive "
          "| input alone | infer faces/s batch 1 | batch 64 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, params, ours, ours_float32, built_in, naive, ratio, feed, b1, b64 in rows:
        print(f"| {name} | {params / 1e6:.2f}M | {ours:.0f} | {ours_float32:.0f} | {built_in:.0f} | {naive:.0f} "
              f"| {ratio:.2f}x "
              f"| {feed:.0f} | {b1:.0f} | {b64:.0f} |")

    if profiles:
        kinds = sorted({kind for totals in profiles.values() for kind in totals},
                       key=lambda kind: -sum(totals.get(kind, 0.0) for totals in profiles.values()))
        print(f"\nWhere a ferkit step's time goes ({policy}): share of op time, summed over threads, "
              f"{args.steps} steps")
        print("| op | " + " | ".join(profiles) + " |")
        print("|---|" + "---|" * len(profiles))
        for kind in kinds:
            print(f"| {kind} | " + " | ".join(
                f"{100 * totals.get(kind, 0.0) / sum(totals.values()):.0f}%" for totals in profiles.values()) + " |")
        print("| op time per step | " + " | ".join(f"{sum(t.values()):.0f} ms" for t in profiles.values()) + " |")


if __name__ == "__main__":
    main()
