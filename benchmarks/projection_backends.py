"""One orthogonal projection on TensorFlow, JAX and PyTorch (CPU), in one run.

    python benchmarks/projection_backends.py [--rounds 3] [--repeats 10]
                                              [--backends tensorflow,jax,torch]

The projection of ``projection_case.py`` (a 64->64 3x3 circular conv on
32x32, compiled: ``tf.function`` or ``jax.jit``; eager on PyTorch), cold
(every block decomposed) and warm (from the previous projection's screen
state). Each backend runs in its own process; they take turns (in rotating
order) for ``--rounds`` rounds, and each backend's ratio to TensorFlow of
every round is printed with the median.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(backend, repeats):
    """``(cold, warm, share)`` from a process running ``backend``."""
    code = (
        "import json, os; os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2');"
        "from projection_case import projection_times;"
        f"print(json.dumps(projection_times(repeats={repeats})))"
    )
    environment = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": HERE}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def rotating_turns(backends, rounds):
    """``(turn, backends in this turn's order)``: each round starts one
    backend later, so a drifting machine's speed falls on all alike."""
    for turn in range(rounds):
        shift = turn % len(backends)
        yield turn, backends[shift:] + backends[:shift]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    args = parser.parse_args()
    backends = args.backends.split(",")
    others = [b for b in backends if b != "tensorflow"]
    ratios = {(backend, kind): [] for backend in others for kind in ("cold", "warm")}
    for turn, order in rotating_turns(backends, args.rounds):
        times = {backend: measure(backend, args.repeats) for backend in order}
        print(
            f"round {turn + 1}: "
            + "; ".join(
                f"{backend} cold {1000 * times[backend][0]:.1f} ms, warm "
                f"{1000 * times[backend][1]:.1f} ms ({100 * times[backend][2]:.1f}% of the blocks)"
                for backend in backends
            )
        )
        if "tensorflow" in times:
            for backend in others:
                for i, kind in enumerate(("cold", "warm")):
                    ratios[backend, kind].append(times[backend][i] / times["tensorflow"][i])
    for (backend, kind), values in ratios.items():
        if values:
            print(
                f"{kind}: {backend} / tensorflow {np.median(values):.2f} "
                f"(rounds {', '.join(f'{v:.2f}' for v in values)})"
            )


if __name__ == "__main__":
    main()
