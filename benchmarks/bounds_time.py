"""Time to compute all twelve bounds and the test-error bounds, in one run.

    python benchmarks/bounds_time.py [--images 10000] [--channels 512]

simple_convnet6 (512 channels by default, bound, kernels moved off K0) on
random 32x32x3 inputs labelled by the network itself; times
`bounds.measure_quantities` (one streamed pass: margins, data norms, the
largest input-patch norm of every layer by one ones-kernel convolution,
exact Lipschitz constants), `bounds.all_bounds` and `bounds.error_bounds`
(each bound on the test error, minimized over the 81-margin grid)
separately.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import keras_capacity as kc
from keras_capacity import bounds, models


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=512)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    model = models.simple_convnet6(
        10, n_channels=args.channels, lip=(2, 1, -1, 1), dist=(90, 90, -1, 90)
    )
    kc.bind(model)
    for layer in model.layers:
        if getattr(layer, "kernel", None) is not None:
            layer.kernel.assign(layer.kernel * 1.01)
    x = np.random.default_rng(0).standard_normal((args.images, 32, 32, 3)).astype(np.float32)
    labels = np.concatenate(
        [np.asarray(model(x[i : i + 500])).argmax(1) for i in range(0, len(x), 500)]
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(500)
    start = time.perf_counter()
    quantities = bounds.measure_quantities(model, dataset)
    measured = time.perf_counter() - start
    start = time.perf_counter()
    values = bounds.all_bounds(quantities)
    computed = time.perf_counter() - start
    start = time.perf_counter()
    test_error = bounds.error_bounds(quantities)
    error_time = time.perf_counter() - start
    total = measured + computed + error_time
    print(f"simple_convnet6, {args.channels} channels, {args.images} inputs of 32x32x3")
    print(
        f"measure_quantities: {measured:.1f} s; all twelve bounds: {computed * 1000:.1f} ms; "
        f"the twelve test-error bounds: {error_time * 1000:.0f} ms; total {total:.1f} s "
        "(target <= 60 s)"
    )
    for name, value in values.items():
        bound = test_error[name]
        print(
            f"  {name:26s} R = {value:.4g}; test error <= {bound.value:.4g} at margin "
            f"{bound.margin:.4g}"
        )


if __name__ == "__main__":
    main()
