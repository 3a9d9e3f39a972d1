"""One orthogonal projection, cold and warm, on any Keras backend (no
TensorFlow import, so that ``gpu.py`` runs on JAX alone).

The layer: a ``channels -> channels`` 3x3 ``CircularConv2D`` (its size,
below 3) on a ``size x size`` input with ``LipDist(lip, 50,
mode="orthogonal")``, ``lip`` just below the norm of 1.2 times its initial
kernel, so that the first projection clips the few blocks on top, as
training does. *Cold*: the projection of 1.2 times the initial kernel with
every block bound unknown (:mod:`keras_capacity.screen`), so every block is
decomposed, as without a screen. *Warm*: the next projection, from the
state the cold one left, of its result moved by a random step of 1e-3 of
its own size (the blocks it clipped sit at ``lip`` and are decomposed
again); the share of blocks it decomposes is returned with the times.
"""

import time

import keras
import numpy as np
from keras import ops

import keras_capacity as kc
from keras_capacity import backend, exact_norms, orthogonal, projections


def median_seconds(function, argument, repeats):
    """Median seconds of ``function(argument)``, its outputs fetched, after
    one call that compiles it."""

    def run():
        return [ops.convert_to_numpy(x) for x in keras.tree.flatten(function(argument))]

    run()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def decomposed_share(block_screen, state, kernel, k0, lip, dist):
    """The share of blocks that the next projection of ``kernel`` from the
    screen's ``state`` decomposes: those whose carried bound exceeds ``lip``
    once the kernel is in the distance ball (the projection's first step)."""
    inside = k0 + projections.project_l21_ball(kernel - k0, dist)
    return float(np.mean(ops.convert_to_numpy(block_screen.carried(state, inside)) > lip))


def projection_times(channels=64, size=32, repeats=10):
    """``(cold seconds, warm seconds, share of blocks the warm one decomposes)``."""
    keras.utils.set_random_seed(0)
    kernel_size = 3 if size > 2 else size
    probe = kc.CircularConv2D(channels, kernel_size, use_bias=False)
    keras.Sequential([keras.Input((size, size, channels)), probe])
    start = 1.2 * np.asarray(ops.convert_to_numpy(probe.kernel), np.float64)
    lip = 0.98 * exact_norms.spectral_norm(
        start, kc.binding.operator_geometry(probe, (None, size, size, channels))
    )
    conv = kc.CircularConv2D(
        channels,
        kernel_size,
        use_bias=False,
        kernel_constraint=kc.LipDist(lip, 50.0, mode="orthogonal"),
    )
    kc.bind(keras.Sequential([keras.Input((size, size, channels)), conv]))
    constraint = conv.kernel_constraint
    block_screen, k0 = constraint.screen, ops.convert_to_tensor(constraint.initial_kernel)

    def projection(state):
        return backend.compile(
            lambda kernel: orthogonal.project_screened(kernel, k0, lip, 50.0, block_screen, state)
        )

    cold_state = tuple(
        ops.convert_to_tensor(x) for x in block_screen.start(ops.convert_to_numpy(k0))
    )
    kernel = ops.convert_to_tensor((1.2 * ops.convert_to_numpy(k0)).astype(np.float32))
    cold = median_seconds(projection(cold_state), kernel, repeats)
    projected, warm_state = projection(cold_state)(kernel)
    moved = ops.convert_to_numpy(projected)
    step = np.random.default_rng(0).standard_normal(moved.shape)
    moved = moved + 1e-3 * np.linalg.norm(moved) / np.linalg.norm(step) * step
    moved = ops.convert_to_tensor(moved.astype(np.float32))
    warm = median_seconds(projection(warm_state), moved, repeats)
    return cold, warm, decomposed_share(block_screen, warm_state, moved, k0, lip, 50.0)
