"""A projection outside the train step on each backend: `keras_capacity.project`
with 15 orthogonal rounds (the training program's final projection) of a
32-channel ``simple_convnet6``, called three times, each after a move of the
kernels.

    python benchmarks/eager_projection.py [--rounds 2]
                                          [--backends tensorflow,jax,torch]

Each backend runs in its own process, in rotating order, ``--rounds`` times;
the times include waiting for the kernels' values (JAX dispatches
asynchronously). The first call compiles where the backend compiles (JAX:
`keras_capacity.backend.compile_eager`); the later ones show what a
compiled projection costs.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
from projection_backends import rotating_turns

CALLS = """
import json, time
import numpy as np, keras
import keras_capacity as kc
from keras_capacity import binding, models
keras.utils.set_random_seed(0)
model = models.simple_convnet6(10, n_channels=32, lip=(2, 1.5, -1, 2), dist=(4, 4, -1, 2),
                               mode="orthogonal")
kc.bind(model)
pairs = binding.constrained_layers(model)
rng = np.random.default_rng(0)
times = []
for call in range(3):
    for layer, _ in pairs:
        moved = layer.kernel.numpy() + 0.3 * rng.standard_normal(layer.kernel.shape)
        layer.kernel.assign(moved.astype("float32"))
    start = time.perf_counter()
    kc.project(model, n_iter=15)
    [np.asarray(layer.kernel.numpy()) for layer, _ in pairs]
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def measure(backend):
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", CALLS], env=environment, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    args = parser.parse_args()
    backends = args.backends.split(",")
    later = {backend: [] for backend in backends}
    for turn, order in rotating_turns(backends, args.rounds):
        times = {backend: measure(backend) for backend in order}
        print(
            f"round {turn + 1}: "
            + "; ".join(
                f"{backend} first {times[backend][0]:.2f} s, then "
                + ", ".join(f"{t:.2f}" for t in times[backend][1:])
                for backend in backends
            )
        )
        for backend in backends:
            later[backend].extend(times[backend][1:])
    if "tensorflow" in later:
        for backend in backends:
            ratio = np.median(later[backend]) / np.median(later["tensorflow"])
            spread = f"{min(later[backend]):.2f}-{max(later[backend]):.2f} s"
            print(f"later calls: {backend} / tensorflow {ratio:.2f} ({spread})")


if __name__ == "__main__":
    main()
