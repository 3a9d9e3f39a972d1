"""Projections onto the constraint sets of SPEC §3, as tensor functions.

Kernels are in Keras layouts, Dense ``(in, out)`` and Conv2D
``(kh, kw, in, out)``; in both the input axis is the second to last, and the
(2,1) group norm of ``D = K - K0`` takes the Euclidean norm over that axis
for every output unit and kernel position, then sums:

    ||D||_{2,1} = sum_j g_j,   g_j = ||D[..., :, j]||_2 over the input axis.
"""

import tensorflow as tf

INPUT_AXIS = -2


def as_dtype(value, dtype):
    """``value`` (a tensor or a Python number) as a tensor of ``dtype``.

    ``tf.cast`` of a Python float goes through float32 first, which would
    round a bound by 1e-8 relative in float64 computations.
    """
    return tf.cast(value, dtype) if tf.is_tensor(value) else tf.constant(value, dtype)


def group_norms(delta):
    """The group norms ``g_j`` of ``delta`` (norm over the input axis)."""
    return tf.norm(delta, axis=INPUT_AXIS, keepdims=True)


def l21_norm(delta):
    """``||delta||_{2,1}``: the sum of the group norms."""
    return tf.reduce_sum(group_norms(delta))


def project_l21_ball(delta, radius):
    """Euclidean projection of ``delta`` onto ``{D : ||D||_{2,1} <= radius}``.

    Group soft-thresholding: every group is shrunk by ``max(0, 1 - lam/g_j)``
    where ``lam >= 0`` solves ``sum_j max(g_j - lam, 0) = radius``. ``lam`` is
    found exactly by sorting the group norms, as for the l1 ball (Duchi et
    al., ICML 2008): with ``g`` sorted decreasingly and ``c_k`` its partial
    sums, ``rho = max{k : g_(k) > (c_k - radius) / k}`` and
    ``lam = (c_rho - radius) / rho``. Inside the ball ``delta`` is returned
    unchanged; ``radius = 0`` gives zero.
    """
    norms = group_norms(delta)
    flat = tf.reshape(norms, [-1])
    radius = as_dtype(radius, delta.dtype)
    ordered = tf.sort(flat, direction="DESCENDING")
    partial_sums = tf.cumsum(ordered)
    ranks = tf.range(1, tf.size(ordered) + 1, dtype=delta.dtype)
    thresholds = (partial_sums - radius) / ranks
    active = tf.cast(ordered > thresholds, tf.int32)
    rho = tf.maximum(tf.reduce_sum(active), 1)
    lam = tf.maximum(thresholds[rho - 1], 0.0)
    scale = tf.maximum(1.0 - lam / tf.maximum(norms, 1e-30), 0.0)
    inside = tf.reduce_sum(flat) <= radius
    return tf.where(inside, delta, delta * scale)


def shrink_to_l21_ball(delta, radius):
    """Radial map onto the ball: ``delta * min(1, radius / ||delta||_{2,1})``.

    Along the segment from ``K0`` to ``K0 + delta`` the distance grows
    linearly, so this is the point of that segment nearest ``K0 + delta``
    inside the ball.
    """
    norm = l21_norm(delta)
    radius = as_dtype(radius, delta.dtype)
    return delta * tf.minimum(1.0, radius / tf.maximum(norm, 1e-30))


def scale_to_lipschitz(kernel, sigma, lip):
    """Radial Lipschitz projection: ``K * min(1, lip / sigma)``."""
    lip = as_dtype(lip, kernel.dtype)
    sigma = as_dtype(sigma, kernel.dtype)
    return kernel * tf.minimum(1.0, lip / tf.maximum(sigma, 1e-30))
