"""Images per second of `model.fit` for simple_convnet6, measured in one run.

    python benchmarks/train_throughput.py [--images 2560] [--epochs 3]

simple_convnet6 with 64 channels, batch 128, on CIFAR-shaped data (the
bundled shapes10 images through `keras_capacity.data.load`, the training
program's pipeline). Prints images/s for: unconstrained; the reference's
settings (lip 2.0,0.8,1.4,1.0, dist 90,90,90,90, proj_freq 15, n_proj 1)
with the radial and with the orthogonal projection; unconstrained fed from one batch already in memory (the
pipeline's cost is the gap to this); and the ratios, each the median over
interleaved rounds of the ratio within a round. Throughput is the batch size
over the mean step time after the first epoch (tracing), projecting steps
included.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_capacity as kc  # noqa: E402
from keras_capacity import data, models  # noqa: E402

BATCH = 128


class StepTimer(keras.callbacks.Callback):
    """Step times after the first epoch (the input is read inside the step)."""

    def on_train_begin(self, logs=None):
        self.times, self.epoch = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch > 0:
            self.times.append(time.perf_counter() - self.start)


def images_per_second(dataset, epochs, **constraints):
    """``BATCH`` over the mean step time: projecting steps included, and the
    mean over whole epochs spans whole ``every`` periods' worth of steps."""
    keras.utils.set_random_seed(0)
    model = models.simple_convnet6(10, n_channels=64, **constraints)
    kc.bind(model)
    model.compile(keras.optimizers.SGD(0.003, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = StepTimer()
    model.fit(dataset, epochs=epochs + 1, verbose=0, callbacks=[timer], shuffle=False)
    return BATCH / float(np.mean(timer.times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=39 * BATCH)  # whole batches
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pipeline = data.load("shapes10", batch_size=BATCH, limit_to=args.images).train
    x, y = next(iter(pipeline))
    in_memory = tf.data.Dataset.from_tensors((x, y)).repeat(args.images // BATCH)
    reference = dict(lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90), mode="radial",
                     n_iter=1, every=15)
    runs = {
        "unconstrained, pipeline": lambda: images_per_second(pipeline, args.epochs),
        "reference settings (radial, proj_freq 15), pipeline":
            lambda: images_per_second(pipeline, args.epochs, **reference),
        "reference settings (orthogonal, proj_freq 15), pipeline":
            lambda: images_per_second(pipeline, args.epochs, **{**reference, "mode": "orthogonal"}),
        "unconstrained, one batch in memory":
            lambda: images_per_second(in_memory, args.epochs),
    }
    # Interleaved rounds; this VM's speed drifts between runs, so each
    # ratio is taken within a round and the median over rounds is reported.
    rounds = [{name: run() for name, run in runs.items()} for _ in range(args.rounds)]
    base = "unconstrained, pipeline"
    for name in runs:
        speed = np.median([r[name] for r in rounds])
        ratio = np.median([r[name] / r[base] for r in rounds])
        print(f"{name:55s} {speed:8.1f} images/s  ratio {ratio:.3f}")
    in_memory_ratio = np.median([r["unconstrained, one batch in memory"] / r[base] for r in rounds])
    print(f"input pipeline overhead over in-memory tensors: {100 * (in_memory_ratio - 1):+.1f}%")


if __name__ == "__main__":
    main()
