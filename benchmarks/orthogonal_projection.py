"""Cost of mode="orthogonal", measured in one run.

    python benchmarks/orthogonal_projection.py [--repeats 10] [--periods 4]

1. One orthogonal projection (both constraints, one Dykstra round, then the
   feasibility step) of a 64->64 3x3 CircularConv2D on a 32x32 input, as
   compiled in the train step: the median over ``--repeats`` calls, with the
   feasibility step's exact norm alone and the radial projection of the same
   kernel for comparison (its exact norm cold too). "Cold": the screen
   knows no bounds (:mod:`keras_capacity.screen`), so every block is decomposed,
   as on a projection's first call. "Warm": the second conv of the trained
   model of part 2, 14 steps after its last projection, projected from its
   real state (the share of blocks its screen decomposes is printed). Also
   what a projection that decomposes every block cannot go below with
   TensorFlow's solver: its batched eigendecomposition (``eigh``) of the
   kernel's Gram matrices alone, one per frequency up to conjugation, and
   their eigenvalues alone (``eigvalsh``, what the feasibility step needs).
2. The training-step ratio: five 64-channel 3x3 CircularConv2D layers (ReLU)
   on 32x32x3 inputs and a Dense head, batch 128, `model.fit` on random
   data, unconstrained and with `LipDist(1.0, 50, mode=..., every=15)` on
   every kernel. The three models take turns one `every` period (15 steps)
   at a time for ``--periods`` turns, so the machine's drift falls on all
   alike; the ratio is of mean step times, projecting steps included.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from keras import ops
from projection_case import decomposed_share, median_seconds  # benchmarks/, the script's folder
from step_timer import StepTimer

import keras_capacity as kc
from keras_capacity import backend, fourier, orthogonal, radial


def projection_times(mode, repeats):
    """Median seconds of one projection and of the exact norm alone, and the
    constraint and kernel they were measured on."""
    conv = kc.CircularConv2D(
        64, 3, use_bias=False, kernel_constraint=kc.LipDist(1.0, 50, mode=mode, n_iter=1)
    )
    kc.bind(keras.Sequential([keras.Input((32, 32, 64)), conv]))
    constraint = conv.kernel_constraint
    k0, geometry = constraint.initial_kernel, constraint.geometry
    if mode == "orthogonal":
        project = screened_projection(constraint)
    else:
        estimate = constraint.estimator.in_graph
        cold = tuple(tf.constant(v.numpy()) for v in constraint.projection_state)  # unknown
        project = tf.function(
            lambda kernel: radial.project(
                kernel, k0, 1.0, 50, 1, lambda value, state: estimate(value, state, 0), cold
            )[0]
        )
    norm = tf.function(lambda kernel: fourier.spectral_norm(kernel, geometry))
    kernel = tf.constant(1.5 * conv.kernel.numpy())
    return (
        median_seconds(project, kernel, repeats),
        median_seconds(norm, kernel, repeats),
        constraint,
        kernel,
    )


def screened_projection(constraint, state=None):
    """The train step's projection of the constraint's kernel from ``state``
    (default: every bound unknown), compiled."""
    state = constraint.screen.start(constraint.initial_kernel.numpy()) if state is None else state
    k0 = constraint.initial_kernel

    def project(kernel):
        return orthogonal.project_screened(
            kernel, k0, constraint.lip, constraint.dist, constraint.screen, state
        )[0]

    return tf.function(project)


def warm_projection(model, x, y, repeats):
    """Median seconds of one projection of the model's second conv, 14
    training steps after its last one, from its real screen state; and the
    share of its blocks the screen decomposes."""
    model.fit(x[: 128 * 14], y[: 128 * 14], batch_size=128, epochs=1, verbose=0)
    layer = [layer for layer in model.layers if isinstance(layer, kc.CircularConv2D)][1]
    constraint = layer.kernel_constraint
    state = tuple(tf.constant(v.numpy()) for v in constraint.projection_state)
    kernel = tf.constant(layer.kernel.numpy())
    share = decomposed_share(
        constraint.screen,
        state,
        kernel,
        ops.convert_to_tensor(constraint.initial_kernel),
        constraint.lip,
        constraint.dist,
    )
    return median_seconds(screened_projection(constraint, state), kernel, repeats), share


def decomposition_times(constraint, kernel, repeats):
    """Median seconds of ``eigh`` and of ``eigvalsh`` alone on the kernel's
    Gram matrices (one per frequency up to conjugation; the few that are
    their own conjugates are real), and their count."""
    grams = [
        g
        for g in fourier.LatticePairs(constraint.geometry, kernel.shape).grams(kernel)
        if g is not None
    ]

    def timed(solve):
        return median_seconds(tf.function(lambda _: [solve(g) for g in grams]), 0, repeats)

    return timed(backend.eigh), timed(backend.eigvalsh), sum(g.shape[0] for g in grams)


def build(mode):
    layers = [keras.Input((32, 32, 3))]
    for _ in range(5):
        constraint = kc.LipDist(1.0, 50, mode=mode, every=15) if mode else None
        layers += [
            kc.CircularConv2D(64, 3, use_bias=False, kernel_constraint=constraint),
            keras.layers.ReLU(),
        ]
    head = kc.LipDist(1.0, 50, mode=mode, every=15) if mode else None
    layers += [
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, kernel_constraint=head),
    ]
    model = keras.Sequential(layers)
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.01, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--periods", type=int, default=4)
    args = parser.parse_args()
    orthogonal, norm, constraint, kernel = projection_times("orthogonal", args.repeats)
    radial, _, _, _ = projection_times("radial", args.repeats)
    eigh, eigvalsh, matrices = decomposition_times(constraint, kernel, args.repeats)
    print(
        f"one projection, 64->64 3x3 circular conv on 32x32: orthogonal (cold) "
        f"{1000 * orthogonal:.1f} ms (of which the exact norm of the feasibility step "
        f"{1000 * norm:.1f} ms), radial {1000 * radial:.1f} ms"
    )
    print(
        f"floor: the {matrices} 64x64 Gram matrices alone, eigh {1000 * eigh:.1f} ms, "
        f"eigvalsh {1000 * eigvalsh:.1f} ms"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128 * 15, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    models = {mode: build(mode) for mode in (None, "radial", "orthogonal")}
    for model in models.values():  # tracing, and the step counters to a period's start
        model.fit(x, y, batch_size=128, epochs=1, verbose=0)
    timers = {mode: StepTimer() for mode in models}
    for period in range(args.periods):
        for mode in list(models) if period % 2 == 0 else list(reversed(models)):
            models[mode].fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[timers[mode]])
    base = float(np.mean(timers[None].times))
    for mode in ("radial", "orthogonal"):
        step = float(np.mean(timers[mode].times))
        print(
            f"train step, every=15, {mode:10s}: {step:.4f} s vs {base:.4f} s unconstrained, "
            f"ratio {step / base:.3f}"
        )
    warm, share = warm_projection(models["orthogonal"], x, y, args.repeats)
    print(
        f"one projection, 64->64 on 32x32, warm (a trained layer, 14 steps after its last "
        f"projection): orthogonal {1000 * warm:.1f} ms, {100 * share:.1f}% of the blocks decomposed"
    )


if __name__ == "__main__":
    main()
