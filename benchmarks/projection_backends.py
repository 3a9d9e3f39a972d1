"""One orthogonal projection on TensorFlow and on JAX's CPU backend, in one run.

    python benchmarks/projection_backends.py [--rounds 3] [--repeats 10]

The projection of ``projection_case.py`` (a 64->64 3x3 circular conv on
32x32, compiled: ``tf.function`` or ``jax.jit``), cold (every block
decomposed) and warm (from the previous projection's screen state). Each
backend runs in its own process; they take turns for ``--rounds`` rounds,
and the JAX/TensorFlow ratio of every round is printed with the median.
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    ratios = {"cold": [], "warm": []}
    for turn in range(args.rounds):
        order = ("tensorflow", "jax") if turn % 2 == 0 else ("jax", "tensorflow")
        times = {backend: measure(backend, args.repeats) for backend in order}
        for i, kind in enumerate(("cold", "warm")):
            ratios[kind].append(times["jax"][i] / times["tensorflow"][i])
        print(
            f"round {turn + 1}: cold TF {1000 * times['tensorflow'][0]:.1f} ms, JAX "
            f"{1000 * times['jax'][0]:.1f} ms; warm TF {1000 * times['tensorflow'][1]:.1f} ms, "
            f"JAX {1000 * times['jax'][1]:.1f} ms ({100 * times['jax'][2]:.1f}% of the blocks)"
        )
    for kind, values in ratios.items():
        print(
            f"{kind}: JAX / TensorFlow {np.median(values):.2f} "
            f"(rounds {', '.join(f'{v:.2f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
