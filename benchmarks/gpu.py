"""Constrained training and projections on an accelerator, through Keras's
JAX or PyTorch backend, measured in one run (needs JAX or PyTorch, Keras
and this package; no TensorFlow).

    KERAS_BACKEND=jax python benchmarks/gpu.py [--batch 256] [--steps 30] [--rounds 2]
    KERAS_BACKEND=torch python benchmarks/gpu.py ...

1. Step time of ``preact_resnet18`` (the paper's network) on random
   CIFAR-shaped data: unconstrained, and at the reference's settings
   (lip 2.0,0.8,1.4,1.0, dist 90,90,90,0, proj_freq 15) with the
   orthogonal and the radial projection. After one ``fit`` call each of
   tracing (which also brings the step counters to a period's start), the
   three take turns for ``--rounds`` rounds of ``--steps`` steps
   (projections at steps 15 and 30), and every step is timed on its own
   (``step_timer.StepTimer``): a callback with its own ``on_train_batch_end``
   turns off Keras's asynchronous callback dispatch, and Keras converts the
   step's logs to Python numbers before calling it, which waits for the
   step's compiled computation to finish (its outputs are ready together),
   so a step's time is its dispatch and its work, and the fixed cost of a
   ``fit`` call (building the epoch iterator, the callbacks, syncing the
   state back) is left out. Printed: the mean step (projecting steps
   included) and its ratio, paired by round as the median with the
   smallest and largest, and the share of each ``fit`` call's wall time
   that its timed steps cover (near 1: no step's work escaped its timer);
   then, apart, the median step that does not project and the mean one
   that does (every 15th of each call).
   Targets: constrained >= 0.95x unconstrained.
2. One orthogonal projection (both constraints, one Dykstra round, the
   feasibility step), compiled, of a 64->64 3x3 circular convolution on
   32x32 and of a 512->512 one on 4x4, cold (every frequency block
   decomposed) and warm (the screen's state from the previous projection):
   the median over 20 calls (``projection_case.py``; compiled by
   ``jax.jit`` on JAX, eager on PyTorch). Target: the 64->64 one <= 5 ms.

When a GPU is lent, carry the Keras wheel and run it there (see
benchmarks/RESULTS.md); nothing depends on it.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np
from paper_resnet import compiled_resnet  # benchmarks/, the script's folder
from projection_case import projection_times
from step_timer import StepTimer

REFERENCE = dict(lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 0), n_iter=1, every=15)


def resnet(mode):
    return compiled_resnet(**({**REFERENCE, "mode": mode} if mode else {}))


def training_ratios(batch, steps, rounds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    runs = {
        name: resnet(mode)
        for name, mode in (
            ("unconstrained", None),
            ("orthogonal", "orthogonal"),
            ("radial", "radial"),
        )
    }
    print(f"preact_resnet18, batch {batch}: one fit call each first")
    for name, model in runs.items():  # compiling, and the step counters to a period's start
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        print(f"  {name}: first fit call (tracing, compiling) {time.perf_counter() - start:.1f} s")
    means = {name: [] for name in runs}
    covered = {name: [] for name in runs}
    steps_seen = {name: [] for name in runs}
    for turn in range(rounds):
        for name in list(runs) if turn % 2 == 0 else list(reversed(runs)):
            timer = StepTimer()
            start = time.perf_counter()
            runs[name].fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[timer])
            wall = time.perf_counter() - start
            means[name].append(float(np.mean(timer.times)))
            steps_seen[name].extend(timer.times)
            covered[name].append(sum(timer.times) / wall)
    base = np.array(means["unconstrained"])
    print(
        f"preact_resnet18, batch {batch}, reference settings, proj_freq 15 "
        f"({rounds} rounds of {steps} timed steps each, after one call of tracing):"
    )
    for name, values in means.items():
        values = np.array(values)
        paired = base / values
        print(
            f"  {name:14s} {1000 * values.mean():8.2f} ms/step  "
            f"{batch / values.mean():8.0f} images/s  ratio {base.mean() / values.mean():.3f}, "
            f"paired by round {np.median(paired):.3f} ({paired.min():.3f} .. {paired.max():.3f}); "
            f"timed steps cover {100 * min(covered[name]):.0f}-{100 * max(covered[name]):.0f}% "
            "of each fit call"
        )
    print("  per step (ms): median of the steps that do not project, mean of those that do")
    for name, times in steps_seen.items():
        times = np.array(times)
        projecting = (np.arange(len(times)) % steps) % REFERENCE["every"] == REFERENCE["every"] - 1
        print(
            f"  {name:14s} {1000 * np.median(times[~projecting]):8.2f} "
            f"{1000 * times[projecting].mean():8.2f}"
        )


def device_line():
    """The device Keras computes on, and the backend's version."""
    if keras.backend.backend() == "torch":
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        return f"device: {name}; torch {torch.__version__}"
    import jax

    device = jax.devices()[0]
    return f"device: {device.platform} {getattr(device, 'device_kind', '')}; jax {jax.__version__}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{device_line()}, keras {keras.__version__}, backend {keras.backend.backend()}")
    for channels, size in ((64, 32), (512, 4)):
        start = time.perf_counter()
        cold, warm, share = projection_times(channels, size, repeats=20)
        elapsed = time.perf_counter() - start
        print(
            f"one orthogonal projection, {channels}->{channels} 3x3 circular conv on "
            f"{size}x{size}: cold {1000 * cold:.2f} ms, warm {1000 * warm:.2f} ms "
            f"({100 * share:.1f}% of the blocks decomposed; {elapsed:.1f} s with compiling)"
        )
    training_ratios(args.batch, args.steps, args.rounds)


if __name__ == "__main__":
    main()
