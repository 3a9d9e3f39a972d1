"""The demo's training throughput on TensorFlow, JAX and PyTorch (CPU), in one run.

    python benchmarks/demo_backends.py [--rounds 2] [--epochs 8]
                                        [--backends tensorflow,jax,torch]

Runs ``make demo``'s job (``train_main.py --flagfile=examples/demo.flags``,
a fresh run directory each time) on each backend in its own process; the
backends take turns in rotating order for ``--rounds`` rounds, so a shared
machine's drift falls on all of them. Printed: the images per second that
the run's last line reports (its training images over its ``fit`` time,
tracing included), each backend's ratio to TensorFlow per round, and the
median.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from projection_backends import rotating_turns  # benchmarks/, the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images_per_second(backend, epochs):
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [
                sys.executable,
                "train_main.py",
                "--flagfile=examples/demo.flags",
                f"--epochs={epochs}",
                f"--logdir={folder}/run",
            ],
            cwd=ROOT,
            env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"},
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"(\d+) images/s over", result.stdout)
    if found is None:
        raise RuntimeError(f"{backend}: no throughput in the run's output:\n{result.stdout}")
    return float(found.group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    args = parser.parse_args()
    backends = args.backends.split(",")
    speeds = {backend: [] for backend in backends}
    for turn, order in rotating_turns(backends, args.rounds):
        for backend in order:
            speeds[backend].append(images_per_second(backend, args.epochs))
        print(
            f"round {turn + 1}: "
            + ", ".join(f"{b} {speeds[b][-1]:.0f} images/s" for b in backends),
            flush=True,
        )
    if "tensorflow" in speeds:
        base = np.array(speeds["tensorflow"])
        for backend in backends:
            ratios = np.array(speeds[backend]) / base
            print(
                f"{backend}: {np.median(speeds[backend]):.0f} images/s, to tensorflow "
                f"{np.median(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
            )


if __name__ == "__main__":
    main()
