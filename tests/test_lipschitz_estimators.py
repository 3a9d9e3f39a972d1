"""How LipDist finds Lip(K) in the train step: the bound holds after every
projecting step, against the dense operator matrix and a worst-case-input
search, over many large fit steps that keep moving the top singular
direction; on one device, on two, and compiled by XLA."""

import keras
import numpy as np
import pytest
from conftest import operator_matrix, worst_case_gain

import keras_capacity as kc
from keras_capacity import lipschitz_estimators
from keras_capacity.constraints import DISTANCE_TOLERANCE, LIPSCHITZ_TOLERANCE

SHAPE = (10, 10, 4)
LIP, DIST = 0.5, 20.0


def build(conv_kwargs, jit_compile=False):
    conv = keras.layers.Conv2D(
        6, 3, use_bias=False, kernel_constraint=kc.LipDist(LIP, DIST), **conv_kwargs
    )
    head = keras.layers.Dense(5, use_bias=False, kernel_constraint=kc.LipDist(LIP, DIST))
    model = keras.Sequential([keras.Input(SHAPE), conv, keras.layers.Flatten(), head])
    kc.bind(model)
    # Large steps on targets far from the outputs: the kernels leave their
    # bounds by a lot at every step.
    model.compile(keras.optimizers.SGD(1.0), "mse", jit_compile=jit_compile)
    return model, conv, head


def top_direction_and_norm(conv):
    _, s, vt = np.linalg.svd(operator_matrix(conv, SHAPE), full_matrices=False)
    return vt[0], s[0]


def check_many_large_steps(model, conv, head, steps=25):
    rng = np.random.default_rng(1)
    moved, previous = 0, None
    for step in range(steps):
        x = rng.standard_normal((8, *SHAPE)).astype("float32")
        y = 10 * rng.standard_normal((8, 5)).astype("float32")
        model.fit(x, y, batch_size=8, verbose=0)  # one step, one projection
        direction, norm = top_direction_and_norm(conv)
        assert norm <= LIP * (1 + LIPSCHITZ_TOLERANCE), (step, norm / LIP)
        dense_norm = np.linalg.norm(head.kernel.numpy().astype(np.float64), 2)
        assert dense_norm <= LIP * (1 + LIPSCHITZ_TOLERANCE), (step, dense_norm / LIP)
        assert kc.distance(conv) <= DIST * (1 + DISTANCE_TOLERANCE)
        if previous is not None and abs(direction @ previous) < 0.5:
            moved += 1
        previous = direction
    # The steps did move the top singular direction, most of the time.
    assert moved >= steps // 2, moved
    # The dense matrix is the layer's own map: an input that gradient ascent
    # finds attains its norm (to float32 precision), so the bound checked
    # above is the layer's true gain, not a looser number.
    assert worst_case_gain(conv, SHAPE) == pytest.approx(norm, rel=1e-5)


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        dict(padding="same"),
        dict(padding="same", strides=2),
        dict(padding="valid", dilation_rate=2),
        dict(padding="valid", strides=(2, 1)),
    ],
    ids=str,
)
def test_the_bound_holds_after_every_large_step(conv_kwargs):
    model, conv, head = build(conv_kwargs)
    assert conv.kernel_constraint.tracks_directions
    assert isinstance(head.kernel_constraint.estimator, lipschitz_estimators.ExactDense)
    check_many_large_steps(model, conv, head)


def test_the_bound_holds_compiled_by_xla():
    model, conv, head = build(dict(padding="same", strides=2), jit_compile=True)
    check_many_large_steps(model, conv, head, steps=15)


def test_the_bound_holds_on_two_devices(two_cpu_strategy):
    with two_cpu_strategy.scope():
        model, conv, head = build(dict(padding="same"))
    check_many_large_steps(model, conv, head, steps=15)
    replicas = conv.kernel.value.values
    np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())


def test_warm_tracking_takes_one_step():
    """Once warm, a small optimizer step costs one subspace step: the
    estimate already agrees with the converged value."""
    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
    keras.Sequential([keras.Input(SHAPE), conv])
    constraint = kc.LipDist(LIP)
    constraint.create_state(
        conv.kernel.shape, kc.binding.operator_geometry(conv, (1, *SHAPE)), "float64"
    )
    estimator = constraint.estimator
    kernel = conv.kernel.numpy().astype(np.float64)
    _, state = estimator.exact(kernel, ())
    moved = kernel + 1e-4 * np.random.default_rng(0).standard_normal(kernel.shape)
    sigma, _ = estimator.in_graph(keras.ops.convert_to_tensor(moved), state, 1)
    exact, _ = estimator.exact(moved, state)
    assert float(sigma) == pytest.approx(float(exact), rel=1e-6)
