"""The (2,1) distance ball: exact Euclidean projection, radial shrink."""

import numpy as np
import pytest
import tensorflow as tf

from keras_capacity import projections


def l21(delta):
    return np.linalg.norm(delta, axis=-2).sum()


def bisection_threshold(norms, radius):
    """Independent oracle: lambda with sum(max(g - lambda, 0)) = radius."""
    lo, hi = 0.0, norms.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(norms - mid, 0).sum() > radius:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize("shape", [(20, 7), (3, 3, 5, 4)])
@pytest.mark.parametrize("radius", [0.5, 3.0])
def test_projection_is_group_soft_thresholding(shape, radius):
    delta = np.random.default_rng(0).standard_normal(shape)
    projected = projections.project_l21_ball(tf.constant(delta), radius).numpy()
    norms = np.linalg.norm(delta, axis=-2, keepdims=True)
    lam = bisection_threshold(norms, radius)
    expected = delta * np.maximum(1 - lam / norms, 0)
    np.testing.assert_allclose(projected, expected, atol=1e-9)
    # On the sphere, and every group shrunk by the same threshold lambda.
    np.testing.assert_allclose(l21(projected), radius, rtol=1e-10)
    new_norms = np.linalg.norm(projected, axis=-2, keepdims=True)
    shrunk = norms - new_norms
    active = new_norms > 0
    np.testing.assert_allclose(shrunk[active], lam, rtol=1e-8)
    assert np.all(norms[~active] <= lam + 1e-12)


def test_projection_keeps_points_inside_and_zero_radius_gives_zero():
    delta = np.random.default_rng(1).standard_normal((6, 4))
    inside = projections.project_l21_ball(tf.constant(delta), l21(delta) + 1)
    np.testing.assert_array_equal(inside.numpy(), delta)
    zero = projections.project_l21_ball(tf.constant(delta), 0.0)
    np.testing.assert_allclose(zero.numpy(), 0.0, atol=1e-12)


def test_projection_is_nearest_point_of_the_ball():
    """No random point of the ball is closer than the projection."""
    rng = np.random.default_rng(2)
    delta = rng.standard_normal((8, 5))
    radius = 2.0
    projected = projections.project_l21_ball(tf.constant(delta), radius).numpy()
    best = np.linalg.norm(delta - projected)
    for _ in range(2000):
        q = rng.standard_normal((8, 5))
        q *= rng.uniform() * radius / l21(q)
        assert np.linalg.norm(delta - q) >= best - 1e-12


def test_radial_shrink_and_lipschitz_scaling():
    delta = np.random.default_rng(3).standard_normal((4, 3))
    shrunk = projections.shrink_to_l21_ball(tf.constant(delta), 1.0).numpy()
    np.testing.assert_allclose(l21(shrunk), 1.0)
    np.testing.assert_allclose(shrunk / delta, shrunk[0, 0] / delta[0, 0])
    scaled = projections.scale_to_lipschitz(tf.constant(delta), 4.0, 2.0)
    np.testing.assert_allclose(scaled.numpy(), delta / 2)
    same = projections.scale_to_lipschitz(tf.constant(delta), 1.0, 2.0)
    np.testing.assert_array_equal(same.numpy(), delta)
