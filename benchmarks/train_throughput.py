"""Images per second of `model.fit`, constrained against unconstrained, in one run.

    python benchmarks/train_throughput.py [--images 4992] [--epochs 12] [--resnet_rounds 5]

(``--epochs 0``: part 2 alone; ``--resnet_rounds 0``: part 1 alone.)

Part 1, simple_convnet6:

simple_convnet6 with 64 channels, batch 128, on CIFAR-shaped data (the
bundled shapes10 images through `keras_capacity.training.data.load`, the training
program's pipeline). Four models train side by side: unconstrained; the
reference's settings (lip 2.0,0.8,1.4,1.0, dist 90,90,90,90, proj_freq 15,
n_proj 1) with the radial and with the orthogonal projection; and
unconstrained fed from the same batches already in memory (one epoch of the
pipeline's output stacked into one tensor and sliced: the pipeline's cost is
the gap to this).

They take turns one epoch at a time (in alternating order), so that the
speed drift of a shared machine falls on all of them alike; throughput is
the batch size over the mean step time (projecting steps included, the step
counter running on across epochs) after one epoch of tracing. Ratios are
to the unconstrained model fed by the pipeline. The two unconstrained
models run identical steps, so their median step times are compared too
(robust to the machine's pauses), and the pipeline's own time per batch is
measured by draining it in a compiled loop with no model.

Part 2, preact_resnet18 (the training program's default run): batch 64,
random CIFAR-shaped data, the reference's settings (lip 2.0,0.8,1.4,1.0,
dist 90 on all four entries: a constrained Dense head, proj_freq 15)
with the orthogonal and the radial projection, against unconstrained;
the three take turns for ``--resnet_rounds`` rounds of 30 steps (two
projections each); printed: images/s and the ratio over all rounds, and the
ratio paired by round (median, smallest and largest). Printed with it:
what decomposing every block of every layer would cost alone (every
layer's Gram matrices, eigenvectors for the orthogonal projection,
eigenvalues for the radial one, in one compiled call: the floor of a
projection without the per-block screen of :mod:`keras_capacity.screen`),
and the ratio that alone would allow.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from paper_resnet import compiled_resnet  # benchmarks/, the script's folder
from step_timer import StepTimer

import keras_capacity as kc
from keras_capacity import backend, fourier, models, projections
from keras_capacity.training import data

BATCH = 128
RESNET_BATCH, RESNET_STEPS = 64, 30
REFERENCE = dict(lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90), n_iter=1, every=15)


def build(**constraints):
    keras.utils.set_random_seed(0)
    model = models.simple_convnet6(10, n_channels=64, **constraints)
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.003, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def resnet(mode=None):
    return compiled_resnet(**({**REFERENCE, "mode": mode} if mode else {}))


def decomposition_floor(model, vectors, repeats=5):
    """Median seconds of every constrained layer's Gram matrices'
    decompositions alone (``eigh`` with ``vectors``, else ``eigvalsh``),
    in one compiled call, as a projection of the whole model needs them."""
    grams = []
    for layer, constraint in kc.binding.constrained_layers(model):
        kernel = tf.constant(layer.kernel.numpy())
        if constraint.geometry.kind == "dense":
            grams.append(projections.gram_side(kernel)[0])
        else:
            grams += fourier.gram_matrices(kernel, constraint.geometry)[0]
    grams = [g for g in grams if g is not None]
    solve = backend.eigh if vectors else backend.eigvalsh
    decompose = tf.function(lambda *matrices: [solve(m) for m in matrices])
    decompose(*grams)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [tf.nest.map_structure(lambda t: t.numpy(), r) for r in decompose(*grams)]
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def resnet_ratios(rounds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((RESNET_BATCH * RESNET_STEPS, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    runs = {
        "unconstrained": resnet(),
        "orthogonal": resnet("orthogonal"),
        "radial": resnet("radial"),
    }
    for model in runs.values():  # tracing, and the step counters to a period's start
        model.fit(x, y, batch_size=RESNET_BATCH, epochs=1, verbose=0)
    timers = {name: StepTimer() for name in runs}
    for turn in range(rounds):
        for name in list(runs) if turn % 2 == 0 else list(reversed(runs)):
            runs[name].fit(
                x, y, batch_size=RESNET_BATCH, epochs=1, verbose=0, callbacks=[timers[name]]
            )
    step = {name: float(np.mean(timer.times)) for name, timer in timers.items()}
    base = step["unconstrained"]
    # Each round's mean step (projections included), paired across models.
    rounds_of = {
        name: np.mean(np.reshape(timer.times, (rounds, RESNET_STEPS)), axis=1)
        for name, timer in timers.items()
    }
    print(f"preact_resnet18, batch {RESNET_BATCH}, reference settings, proj_freq 15:")
    for name in runs:
        paired = rounds_of["unconstrained"] / rounds_of[name]
        print(
            f"  {name:14s} {RESNET_BATCH / step[name]:7.1f} images/s  ratio {base / step[name]:.3f}"
            f" (per round: median {np.median(paired):.3f}, {paired.min():.3f}-{paired.max():.3f})"
        )
    for mode, vectors in (("orthogonal", True), ("radial", False)):
        floor = decomposition_floor(runs[mode], vectors)
        spent = (step[mode] - base) * REFERENCE["every"]
        allowed = REFERENCE["every"] * base / (REFERENCE["every"] * base + floor)
        print(
            f"  {mode}: one projection of the model costs {1000 * spent:.0f} ms in the train "
            f"step; decomposing every block ({'eigh' if vectors else 'eigvalsh'}) alone takes "
            f"{1000 * floor:.0f} ms, which would allow a ratio of at most {allowed:.3f}"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=39 * BATCH)  # whole batches
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--resnet_rounds", type=int, default=5)
    args = parser.parse_args()
    if args.resnet_rounds:
        resnet_ratios(args.resnet_rounds)
    if args.epochs == 0:  # the ResNet alone
        return
    pipeline = data.load("shapes10", batch_size=BATCH, limit_to=args.images).train
    batches = list(pipeline)
    in_memory = tf.data.Dataset.from_tensor_slices(
        (tf.stack([x for x, _ in batches]), tf.stack([y for _, y in batches]))
    )
    reference = {**REFERENCE, "mode": "radial"}
    runs = {
        "unconstrained, pipeline": (build(), pipeline),
        "reference settings (radial, proj_freq 15), pipeline": (build(**reference), pipeline),
        "reference settings (orthogonal, proj_freq 15), pipeline": (
            build(**{**reference, "mode": "orthogonal"}),
            pipeline,
        ),
        "unconstrained, batches in memory": (build(), in_memory),
    }
    for model, dataset in runs.values():  # tracing
        model.fit(dataset, epochs=1, verbose=0)
    timers = {name: StepTimer() for name in runs}
    for epoch in range(args.epochs):
        for name in list(runs) if epoch % 2 == 0 else list(reversed(runs)):
            model, dataset = runs[name]
            model.fit(dataset, epochs=1, verbose=0, callbacks=[timers[name]])
    speed = {name: BATCH / float(np.mean(timer.times)) for name, timer in timers.items()}
    base = speed["unconstrained, pipeline"]
    for name in runs:
        print(f"{name:57s} {speed[name]:7.1f} images/s  ratio {speed[name] / base:.3f}")
    mean_overhead = speed["unconstrained, batches in memory"] / base - 1
    medians = {name: float(np.median(timers[name].times)) for name in runs}
    median_overhead = (
        medians["unconstrained, pipeline"] / medians["unconstrained, batches in memory"] - 1
    )
    print(
        f"input pipeline overhead over in-memory tensors: {100 * mean_overhead:+.1f}% "
        f"(mean step), {100 * median_overhead:+.1f}% (median step)"
    )
    alone = pipeline_time(pipeline, len(batches))
    print(
        f"the pipeline alone: {1000 * alone:.2f} ms per batch, "
        f"{100 * alone / medians['unconstrained, pipeline']:.1f}% of an unconstrained step"
    )


def pipeline_time(dataset, steps, repeats=5):
    """Seconds per batch to drain ``dataset`` in a compiled loop."""
    drain = tf.function(
        lambda: dataset.reduce(0.0, lambda total, batch: total + batch[0][0, 0, 0, 0])
    )
    drain()
    start = time.perf_counter()
    for _ in range(repeats):
        drain()
    return (time.perf_counter() - start) / (repeats * steps)


if __name__ == "__main__":
    main()
