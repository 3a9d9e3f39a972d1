"""Training-step overhead of LipDist (radial), measured in one run.

    python benchmarks/constraint_overhead.py [--rounds 8] [--warmup 3]

Five 3x3 convolutions of 64 channels ("same" padding, ReLU) on 32x32x3
inputs, a dense head, batch 128, random data, trained by `model.fit`:
unconstrained, and with `LipDist(1.0, 50)` on every kernel projecting with
`every=15` and with `every=1`.

The three settings take turns, 15 steps each (one `every=15` period, so
every turn of that setting holds one projecting step), in alternating
order for ``--rounds`` rounds after ``--warmup`` steps of tracing each, so
the speed drift of a shared machine falls on all of them alike. A turn's
mean step time includes its projecting steps. Printed: for each
constrained setting, the ratio of its mean step to the unconstrained one's
in the same round (paired), as the median over rounds with the smallest and
largest; and the ratio of the best rounds (each setting's fastest round:
the machine at its least disturbed). The ratios of median steps are printed
beside them.

Then the cost of one compiled train-step projection of each layer after
training, from its warm estimator state, for two kernels: the trained
kernel scaled by 1.001 (the tracked singular directions are still exact:
the best case) and the trained kernel moved in a random direction by 1% of
its norm (Frobenius), so the directions have to move; the median of 20
calls each.
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

PERIOD = 15  # steps per turn: one every=15 period
BATCH = 128
RANDOM_MOVE = 0.01  # the random kernel move, relative to the kernel's norm


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


def turns(models, x, y, rounds):
    """``{setting: [(mean step, median step) of each round]}``: the
    settings take turns one period at a time, in alternating order."""
    found = {name: [] for name in models}
    for round_index in range(rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in order:
            timer = StepTimer()
            models[name].fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[timer])
            found[name].append((float(np.mean(timer.times)), float(np.median(timer.times))))
    return found


def report_ratios(found, base="unconstrained"):
    rounds = len(found[base])
    print(
        f"{rounds} rounds of {PERIOD} steps per setting; ratios to {base} "
        "(paired: the same round; spread: smallest .. largest over rounds)"
    )
    print(
        f"{'setting':30s} {'best mean s':>11s} {'paired mean ratio':>26s} "
        f"{'best-round ratio':>17s} {'paired median ratio':>26s}"
    )
    best_base = min(mean for mean, _ in found[base])
    for name, values in found.items():
        means = np.array([mean for mean, _ in values])
        medians = np.array([median for _, median in values])
        paired = means / np.array([mean for mean, _ in found[base]])
        paired_median = medians / np.array([median for _, median in found[base]])
        print(
            f"{name:30s} {means.min():11.4f} "
            f"{np.median(paired):8.3f} ({paired.min():.3f} .. {paired.max():.3f}) "
            f"{means.min() / best_base:17.3f} "
            f"{np.median(paired_median):8.3f} "
            f"({paired_median.min():.3f} .. {paired_median.max():.3f})"
        )


def projection_costs(model, move, repeats=20, seed=0):
    """``[(layer, estimator, median seconds)]`` of one compiled train-step
    projection per constrained layer, from its current (warm) state, of the
    kernel ``move(kernel, rng)``."""
    rng = np.random.default_rng(seed)
    costs = []
    for layer, constraint in kc.binding.constrained_layers(model):
        k0 = constraint.initial_kernel
        state = tuple(keras.ops.convert_to_tensor(v) for v in constraint.projection_state)

        def estimate(value, state, estimator=constraint.estimator):
            return estimator.in_graph(value, state, 1)

        project = tf.function(
            lambda kernel, c=constraint, k0=k0, state=state, estimate=estimate: radial.project(
                kernel, k0, c.lip, c.dist, c.n_iter, estimate, state
            )[0]
        )
        kernel = tf.constant(move(layer.kernel.numpy(), rng))
        project(kernel).numpy()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            project(kernel).numpy()
            times.append(time.perf_counter() - start)
        costs.append((layer.name, type(constraint.estimator).__name__, float(np.median(times))))
    return costs


def scaled(kernel, rng):
    """Every singular value times 1.001, the directions unchanged."""
    return kernel * 1.001


def moved_at_random(kernel, rng):
    """The kernel plus a random direction of ``RANDOM_MOVE`` times its norm."""
    noise = rng.standard_normal(kernel.shape)
    noise *= RANDOM_MOVE * np.linalg.norm(kernel) / np.linalg.norm(noise)
    return (kernel + noise).astype(kernel.dtype)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{os.cpu_count()} CPUs, load average at the start "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}; TensorFlow {tf.__version__}, "
        f"Keras {keras.__version__}"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * PERIOD, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, len(x))
    settings = {
        "unconstrained": lambda: None,
        "LipDist(1.0, 50, every=15)": lambda: kc.LipDist(1.0, 50, every=PERIOD),
        "LipDist(1.0, 50, every=1)": lambda: kc.LipDist(1.0, 50, every=1),
    }
    models = {}
    for name, factory in settings.items():
        keras.utils.set_random_seed(0)
        models[name] = build(factory)
        models[name].fit(  # tracing
            x[: BATCH * args.warmup], y[: BATCH * args.warmup], batch_size=BATCH, verbose=0
        )
    report_ratios(turns(models, x, y, args.rounds))
    print("one train-step projection per layer (after training, compiled, median of 20):")
    print(f"  {'layer':14s} {'estimator':16s} {'kernel x 1.001':>15s} {'random 1% move':>15s}")
    trained = models["LipDist(1.0, 50, every=1)"]
    best, moved = projection_costs(trained, scaled), projection_costs(trained, moved_at_random)
    for (name, estimator, fast), (_, _, slow) in zip(best, moved, strict=True):
        print(f"  {name:14s} {estimator:16s} {1000 * fast:12.2f} ms {1000 * slow:12.2f} ms")
    print(f"load average at the end {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
