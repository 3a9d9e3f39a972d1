"""Training-step overhead of LipDist (radial), measured in one run.

    python benchmarks/constraint_overhead.py [--steps 30]

Five 3x3 convolutions of 64 channels ("same" padding, ReLU) on 32x32x3
inputs, a dense head, batch 128, random data, trained by `model.fit`. Prints
the median and mean step time unconstrained and with `LipDist(1.0, 50)` on
every kernel, projecting with `every=15` and `every=1`, and their ratios
(the mean includes the projecting steps); then the cost of one train-step
projection of each layer, compiled, after training (warm estimator state).
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
from keras_capacity import radial


def build(constraint_factory):
    layers = [keras.Input((32, 32, 3))]
    for _ in range(5):
        layers += [
            keras.layers.Conv2D(
                64, 3, padding="same", use_bias=False, kernel_constraint=constraint_factory()
            ),
            keras.layers.ReLU(),
        ]
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, kernel_constraint=constraint_factory()),
    ]
    model = keras.Sequential(layers)
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def median_step(model, x, y, steps, warmup):
    timer = StepTimer()
    model.fit(
        x, y, batch_size=128, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[timer]
    )
    # Steps of one `every` period are not alike; the median over whole periods is fair.
    return float(np.median(timer.times[warmup:])), float(np.mean(timer.times[warmup:]))


def projection_costs(model, repeats=20):
    """``[(layer, estimator, median seconds)]`` of one compiled train-step
    projection per constrained layer, from its current (warm) state."""
    costs = []
    for layer, constraint in kc.binding.constrained_layers(model):
        k0 = constraint.initial_kernel
        state = tuple(keras.ops.convert_to_tensor(v) for v in constraint.estimator_state)

        def estimate(value, state, estimator=constraint.estimator):
            return estimator.in_graph(value, state, 1)

        project = tf.function(
            lambda kernel, c=constraint, k0=k0, state=state, estimate=estimate: radial.project(
                kernel, k0, c.lip, c.dist, c.n_iter, estimate, state
            )[0]
        )
        kernel = tf.constant(layer.kernel.numpy() * 1.001)
        project(kernel).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            project(kernel).numpy()
            times.append(time.perf_counter() - start)
        costs.append((layer.name, type(constraint.estimator).__name__, float(np.median(times))))
    return costs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = 128 * (args.steps + args.warmup)
    x = rng.standard_normal((n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, n)
    settings = {
        "unconstrained": lambda: None,
        "LipDist(1.0, 50, every=15)": lambda: kc.LipDist(1.0, 50, every=15),
        "LipDist(1.0, 50, every=1)": lambda: kc.LipDist(1.0, 50, every=1),
    }
    results, models = {}, {}
    for name, factory in settings.items():
        keras.utils.set_random_seed(0)
        models[name] = build(factory)
        results[name] = median_step(models[name], x, y, args.steps, args.warmup)
    base_median, base_mean = results["unconstrained"]
    print(
        f"{'setting':32s} {'median s':>9s} {'mean s':>9s} "
        f"{'ratio(median)':>14s} {'ratio(mean)':>12s}"
    )
    for name, (median, mean) in results.items():
        print(
            f"{name:32s} {median:9.4f} {mean:9.4f} "
            f"{median / base_median:14.3f} {mean / base_mean:12.3f}"
        )
    print("one train-step projection per layer (after training, compiled):")
    for name, estimator, seconds in projection_costs(models["LipDist(1.0, 50, every=1)"]):
        print(f"  {name:14s} {estimator:16s} {1000 * seconds:7.2f} ms")


if __name__ == "__main__":
    main()
