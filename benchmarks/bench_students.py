"""Batch-1 speed of candidate distillation students, untrained, beside the shipped average.

    python benchmarks/bench_students.py [--rounds 2]

Which larger ``lite``-shaped network still meets fer_lite's budget (at most
1.5M parameters, at least 5x the average's faces/s at batch 1) before paying
hours to train it: weights do not change speed, so each candidate is built
untrained. Faces/s are medians of interleaved timed calls of each traced graph
(as in ``bench_models.py``); compare the ratios within one round.
"""

from __future__ import annotations

import argparse

from common import throughput  # first: puts this checkout's ferkit on sys.path
from ferkit.architectures import build_model, lite_network
from ferkit.inference import traced_forward
from ferkit.model import load_model

# (convolutions, filters) at 48, 24, 12 and 6 px; lite is [(1, 16), (1, 64), (2, 128), (1, 256)]
CANDIDATES = {
    "one more convolution at 24x24": [(1, 16), (2, 64), (2, 128), (1, 256)],
    "one more convolution at 12x12": [(1, 16), (1, 64), (3, 128), (1, 256)],
    "one more convolution at 6x6": [(1, 16), (1, 64), (2, 128), (2, 256)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, each printed as a column")
    args = parser.parse_args()

    average, _ = load_model("fer")
    networks = {"fer (the average)": average, "lite": build_model("lite"), "lite_wide": build_model("lite_wide")}
    networks.update({f"lite, {name}": lite_network(stages, "candidate") for name, stages in CANDIDATES.items()})
    forwards = {name: traced_forward(network) for name, network in networks.items()}
    rounds = [throughput(forwards, 1) for _ in range(args.rounds)]
    print("| network | parameters | " + " | ".join(f"round {i + 1}: faces/s, x average" for i in range(args.rounds))
          + " |")
    print("|---|---|" + "---|" * args.rounds)
    for name, network in networks.items():
        cells = [f"{fps[name]:.0f}, {fps[name] / fps['fer (the average)']:.1f}x" for fps in rounds]
        print(f"| {name} | {network.count_params() / 1e6:.2f}M | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
