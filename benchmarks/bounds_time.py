"""Time to measure a trained network's capacity record (`kc.measure`), in one run.

    python benchmarks/bounds_time.py [--arch preact_resnet18] [--images 10000]

The paper's `preact_resnet18` (default; or `simple_convnet6` with
`--channels`, 512 by default), bound at the reference's settings and its
kernels moved off K0 as training would, on random CIFAR-shaped inputs
labelled by the network itself. Times `kc.measure` on the images as a
training set and once more as a test set, and, in the same run, its two
parts alone: the exact Lipschitz constants of every kernel, and one
inference pass over the data. For the ResNet the twelve bounds are not
applicable (it is not a chain), so the record holds the layer table, the
network Lipschitz bound, margins and certified accuracy; for
`simple_convnet6` it also holds the bounds and the test-error bounds.
Target (issue 21): at most 60 s for the ResNet on 10,000 images on 2 cores.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import keras_capacity as kc
from keras_capacity import binding, models


def trained_model(arch, channels):
    keras.utils.set_random_seed(0)
    if arch == "preact_resnet18":
        model = models.preact_resnet18(10, lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90))
    else:
        model = models.simple_convnet6(
            10, n_channels=channels, lip=(2, 1, -1, 1), dist=(90, 90, -1, 90)
        )
    kc.bind(model)
    rng = np.random.default_rng(0)
    for layer, _ in binding.constrained_layers(model):
        kernel = np.asarray(layer.kernel)
        layer.kernel.assign(kernel * 1.01 + 0.01 * kernel.std() * rng.standard_normal(kernel.shape))
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="preact_resnet18", choices=models.ARCHITECTURES)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=512)
    args = parser.parse_args()
    model = trained_model(args.arch, args.channels)
    x = np.random.default_rng(0).standard_normal((args.images, 32, 32, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(500)
    labels = np.concatenate([np.asarray(model(b, training=False)).argmax(1) for b in dataset])
    data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(500)

    start = time.perf_counter()
    record = kc.measure(model, data, data)
    total = time.perf_counter() - start
    start = time.perf_counter()
    for layer, _ in binding.constrained_layers(model):
        kc.lipschitz(layer)
    norms = time.perf_counter() - start
    start = time.perf_counter()
    for batch, _ in data:
        model.predict_on_batch(batch)
    forward = time.perf_counter() - start

    kernels = len(binding.constrained_layers(model))
    print(f"{args.arch}, {kernels} kernels, {args.images} inputs of 32x32x3 (train and test)")
    print(
        f"kc.measure: {total:.1f} s (target <= 60 s); in the same run, the exact Lipschitz "
        f"constants alone {norms:.1f} s, one compiled inference pass over the data {forward:.1f} s"
    )
    print(
        f"network Lipschitz bound {record.network_lipschitz:.4g}; train accuracy "
        f"{record.train_accuracy:.3f}; bounds apply: {record.bounds_reason is None}"
    )
    for name, bound in record.test_error_bounds.items():
        if bound is not None:
            print(f"  {name:26s} test error <= {bound.value:.4g} at margin {bound.margin:.4g}")


if __name__ == "__main__":
    main()
