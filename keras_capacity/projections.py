"""Projections onto the constraint sets of SPEC §3, as tensor functions.

Kernels are in Keras layouts, Dense ``(in, out)`` and Conv2D
``(kh, kw, in, out)``; in both the input axis is the second to last (the
default ``axis``; a transposed convolution's ``(..., out, in)`` kernel has
it last, `keras_capacity.linear_layers.input_axis`), and the (2,1)
group norm of ``D = K - K0`` takes the Euclidean norm over that axis for
every output unit and kernel position, then sums:

    ||D||_{2,1} = sum_j g_j,   g_j = ||D[..., :, j]||_2 over the input axis.

Matrices (a Dense kernel, or a batch of per-frequency matrices of a
circular convolution) are projected onto the spectral ball by clipping
their singular values (`clip_singular_values`). `dykstra`
combines projections onto several convex sets.
"""

import numpy as np
from keras import ops

from keras_capacity import backend

INPUT_AXIS = -2


def as_dtype(value, dtype):
    """``value`` (a tensor or a Python number) as a tensor of ``dtype``.

    Casting a Python float goes through float32 first, which would round a
    bound by 1e-8 relative in float64 computations.
    """
    return ops.cast(value, dtype) if ops.is_tensor(value) else ops.convert_to_tensor(value, dtype)


def group_norms(delta, axis=INPUT_AXIS):
    """The group norms ``g_j`` of ``delta`` (norm over the input ``axis``)."""
    return ops.sqrt(ops.sum(ops.square(delta), axis=axis, keepdims=True))


def l21_norm(delta, axis=INPUT_AXIS):
    """``||delta||_{2,1}``: the sum of the group norms."""
    return ops.sum(group_norms(delta, axis))


def project_l21_ball(delta, radius, axis=INPUT_AXIS):
    """Euclidean projection of ``delta`` onto ``{D : ||D||_{2,1} <= radius}``.

    Group soft-thresholding: every group is shrunk by ``max(0, 1 - lam/g_j)``
    where ``lam >= 0`` solves ``sum_j max(g_j - lam, 0) = radius``. ``lam`` is
    found exactly by sorting the group norms, as for the l1 ball (Duchi et
    al., ICML 2008): with ``g`` sorted decreasingly and ``c_k`` its partial
    sums, ``rho = max{k : g_(k) > (c_k - radius) / k}`` and
    ``lam = (c_rho - radius) / rho``. Inside the ball ``delta`` is returned
    unchanged; ``radius = 0`` gives zero.
    """
    norms = group_norms(delta, axis)
    flat = ops.reshape(norms, (-1,))
    radius = as_dtype(radius, delta.dtype)
    ordered = ops.flip(ops.sort(flat))
    partial_sums = ops.cumsum(ordered)
    ranks = ops.arange(1, flat.shape[0] + 1, dtype=delta.dtype)
    thresholds = (partial_sums - radius) / ranks
    rho = ops.maximum(ops.sum(ops.cast(ordered > thresholds, "int32")), 1)
    lam = ops.maximum(ops.take(thresholds, rho - 1), 0.0)
    scale = ops.maximum(1.0 - lam / ops.maximum(norms, 1e-30), 0.0)
    inside = ops.sum(flat) <= radius
    return ops.where(inside, delta, delta * scale)


def shrink_to_l21_ball(delta, radius, axis=INPUT_AXIS):
    """Radial map onto the ball: ``delta * min(1, radius / ||delta||_{2,1})``.

    Along the segment from ``K0`` to ``K0 + delta`` the distance grows
    linearly, so this is the point of that segment nearest ``K0 + delta``
    inside the ball.
    """
    radius = as_dtype(radius, delta.dtype)
    return delta * ops.minimum(1.0, radius / ops.maximum(l21_norm(delta, axis), 1e-30))


def scale_to_lipschitz(kernel, sigma, lip):
    """Radial Lipschitz projection: ``K * min(1, lip / sigma)``."""
    lip = as_dtype(lip, kernel.dtype)
    sigma = as_dtype(sigma, kernel.dtype)
    return kernel * ops.minimum(1.0, lip / ops.maximum(sigma, 1e-30))


def adjoint(matrices):
    """The conjugate transposes ``M^H`` of a batch of matrices."""
    return ops.conj(ops.swapaxes(matrices, -1, -2))


def gram_side(matrices):
    """``(Gram matrix on the smaller side, whether it is M M^H)``."""
    rows, cols = matrices.shape[-2], matrices.shape[-1]
    if rows < cols:
        return backend.matmul(matrices, adjoint(matrices)), True
    return backend.matmul(adjoint(matrices), matrices), False


def singular_value_shrinkage(gram, lip):
    """``V diag(min(1, lip / s)) V^H`` from the Gram matrices ``M^H M = V
    diag(s^2) V^H``: ``M`` times it has its singular values clipped at ``lip``."""
    eigenvalues, vectors = backend.eigh(gram)
    singular = ops.sqrt(ops.maximum(eigenvalues, 0.0))
    factor = ops.minimum(1.0, as_dtype(lip, singular.dtype) / ops.maximum(singular, 1e-30))
    return backend.matmul(
        vectors * ops.expand_dims(ops.cast(factor, vectors.dtype), -2), adjoint(vectors)
    )


def split_real_rows(matrices, real_rows):
    """The batch (flattened over its leading axes) as ``(real part of the
    matrices marked real, the others)``; ``None`` for an empty part."""
    flat = ops.reshape(matrices, (-1, *matrices.shape[-2:]))
    real_index, complex_index = np.flatnonzero(real_rows), np.flatnonzero(~real_rows)
    real = ops.real(ops.take(flat, real_index, axis=0)) if len(real_index) else None
    other = ops.take(flat, complex_index, axis=0) if len(complex_index) else None
    return real, other


def merge_real_rows(real, other, real_rows, shape, dtype):
    """The inverse of `_split`."""
    parts = ([ops.cast(real, dtype)] if real is not None else []) + (
        [other] if other is not None else []
    )
    order = np.argsort(np.concatenate([np.flatnonzero(real_rows), np.flatnonzero(~real_rows)]))
    return ops.reshape(ops.take(ops.concatenate(parts, axis=0), order, axis=0), shape)


def clip_singular_values(matrices, lip, real_rows=None):
    """``U min(S, lip) V^H`` for a batch of (real or complex) matrices.

    Computed from the Hermitian eigendecomposition of the smaller Gram
    matrix (`singular_value_shrinkage`), which is several times faster
    than an SVD on a CPU. ``real_rows`` (a numpy boolean array over the
    batch axes) marks complex matrices known to be real, which are clipped
    in real arithmetic (a real eigendecomposition costs a fraction of a
    complex one).
    """
    if real_rows is not None:
        real, other = split_real_rows(matrices, np.asarray(real_rows).ravel())
        clipped = [
            None if part is None else clip_singular_values(part, lip) for part in (real, other)
        ]
        return merge_real_rows(
            *clipped, np.asarray(real_rows).ravel(), matrices.shape, matrices.dtype
        )
    gram, left = gram_side(matrices)
    shrink = singular_value_shrinkage(gram, lip)
    return backend.matmul(shrink, matrices) if left else backend.matmul(matrices, shrink)


def largest_eigenvalue(*grams):
    """The largest eigenvalue over batches of Hermitian matrices (``None``
    entries skipped)."""
    return ops.max(
        ops.stack([ops.max(backend.largest_eigenvalue(g)) for g in grams if g is not None])
    )


def largest_singular_value(matrices):
    """The largest singular value over a batch of matrices."""
    gram, _ = gram_side(matrices)
    return ops.sqrt(ops.maximum(largest_eigenvalue(gram), 0.0))


def dykstra(point, project_fns, rounds):
    """Dykstra's alternating projections onto the intersection of convex
    sets: ``rounds`` passes over ``project_fns`` (the last one's output is
    returned, so it lies in the last set exactly)."""
    increments = [ops.zeros_like(point) for _ in project_fns]
    for _ in range(rounds):
        for i, project in enumerate(project_fns):
            shifted = point + increments[i]
            point = project(shifted)
            increments[i] = shifted - point
    return point
