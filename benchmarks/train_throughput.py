"""Images per second of `model.fit` for simple_convnet6, measured in one run.

    python benchmarks/train_throughput.py [--images 4992] [--epochs 12]

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
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from step_timer import StepTimer  # benchmarks/, the script's folder

import keras_capacity as kc
from keras_capacity import models
from keras_capacity.training import data

BATCH = 128


def build(**constraints):
    keras.utils.set_random_seed(0)
    model = models.simple_convnet6(10, n_channels=64, **constraints)
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.003, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=39 * BATCH)  # whole batches
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    pipeline = data.load("shapes10", batch_size=BATCH, limit_to=args.images).train
    batches = list(pipeline)
    in_memory = tf.data.Dataset.from_tensor_slices(
        (tf.stack([x for x, _ in batches]), tf.stack([y for _, y in batches]))
    )
    reference = dict(
        lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90), mode="radial", n_iter=1, every=15
    )
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
