"""PoolingShortcut and GroupSort: outputs against numpy, Lipschitz constants
against an adversarial search."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_capacity as kc


def worst_case_ratio(f, shape, steps=300, seed=0):
    """Gradient ascent on ``||f(x) - f(y)|| / ||x - y||`` over pairs."""
    x = tf.Variable(tf.random.stateless_normal((1, *shape), (seed, 1)))
    y = tf.Variable(x + 0.1 * tf.random.stateless_normal((1, *shape), (seed, 2)))
    optimizer = keras.optimizers.Adam(0.02)
    optimizer.build([x, y])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            ratio = tf.norm(f(x) - f(y)) / tf.norm(x - y)
            loss = -ratio
        optimizer.apply(tape.gradient(loss, [x, y]), [x, y])
        return ratio

    return max(float(step()) for _ in range(steps))


def numpy_pooling_shortcut(x):
    n, h, w, c = x.shape
    even = np.zeros((n, -(-h // 2), -(-w // 2), c))  # ceil, as a `same` max-pool
    shifted = np.zeros_like(even)
    for i in range(even.shape[1]):
        for j in range(even.shape[2]):
            even[:, i, j] = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(1, 2))
            rows = slice(max(2 * i - 1, 0), 2 * i + 1)
            cols = slice(max(2 * j - 1, 0), 2 * j + 1)
            shifted[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
    return np.concatenate([even, shifted], axis=-1)


@pytest.mark.parametrize("size", [(8, 8), (5, 7), (2, 2), (1, 3)])
def test_pooling_shortcut_matches_numpy(size):
    x = np.random.randn(2, *size, 3).astype(np.float32)
    layer = kc.PoolingShortcut()
    np.testing.assert_allclose(layer(x).numpy(), numpy_pooling_shortcut(x), rtol=1e-6)
    assert layer.compute_output_shape((2, *size, 3)) == layer(x).shape


def test_pooling_shortcut_duplicates_a_single_pixel():
    x = np.random.randn(2, 1, 1, 4).astype(np.float32)
    np.testing.assert_array_equal(kc.PoolingShortcut()(x).numpy(), np.concatenate([x, x], -1))


@pytest.mark.parametrize("lip", [None, 1.0])
def test_pooling_shortcut_lipschitz(lip):
    layer = kc.PoolingShortcut(lip=lip)
    stated = layer.lipschitz_constant
    assert stated == pytest.approx(min(np.sqrt(2), lip or np.inf))
    assert worst_case_ratio(layer, (6, 6, 2)) <= stated * (1 + 1e-5)
    spike = np.zeros((1, 6, 6, 1), np.float32)
    spike[0, 3, 3] = 1.0  # a pixel that lies in one window of each pool
    assert np.linalg.norm(layer(spike).numpy()) == pytest.approx(stated, rel=1e-6)


def test_group_sort_sorts_groups_and_is_1_lipschitz():
    x = np.random.randn(4, 3, 12).astype(np.float32)
    for group in (2, 3, 4):
        layer = kc.GroupSort(group)
        expected = -np.sort(-x.reshape(4, 3, -1, group), axis=-1).reshape(x.shape)
        np.testing.assert_array_equal(layer(x).numpy(), expected)
    assert worst_case_ratio(kc.GroupSort(2), (12,)) <= 1.0 + 1e-5


def test_bad_arguments():
    with pytest.raises(ValueError, match="group_size"):
        kc.GroupSort(1)
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        kc.GroupSort(4)(np.zeros((1, 6), np.float32))
    with pytest.raises(ValueError, match="lip"):
        kc.PoolingShortcut(lip=0.0)
    with pytest.raises(ValueError, match="channels-last images"):
        kc.PoolingShortcut()(np.zeros((1, 6), np.float32))


def test_save_and_load(tmp_path):
    inputs = keras.Input((4, 4, 2))
    x = kc.PoolingShortcut(lip=1.2)(inputs)
    outputs = kc.GroupSort(2)(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.randn(3, 4, 4, 2).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    assert loaded.layers[1].lip == 1.2 and loaded.layers[2].group_size == 2
