"""Orthogonal (Euclidean) projections onto the Lipschitz ball, and Dykstra's
algorithm for the intersection with the distance ball (SPEC §3).

Dense: clipping the singular values of ``K`` at ``lip`` is the exact
projection onto ``{K : ||K||_2 <= lip}``.

Circular convolution: the kernel is embedded in the ``H x W`` input grid
(tap ``a`` at offset ``d a - p`` modulo the grid, ``p`` the padding before).
The 2-D DFT block-diagonalizes the stride-1 operator into the ``in x out``
matrices ``M(f)``, and the operator's Frobenius norm is ``sqrt(HW)`` times
the embedded kernel's, so clipping every ``M(f)``'s singular values and
transforming back is the exact projection of the embedded kernel onto the
spectral ball. That result is supported on the whole grid; the kernel's own
support is a second (linear) set, the distance ball a third, and Dykstra's
algorithm combines them. The real FFT's Hermitian symmetry halves the
decompositions. With strides, the stride-1 ball is used: subsampling is a
contraction, so it lies inside the strided operator's ball (feasible, not
always nearest).

Everything here is TensorFlow, so it runs inside the compiled train step.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_capacity import circular, operators, projections


def _gram_side(matrices):
    """``(Gram matrix on the smaller side, whether it is M M^H)``."""
    rows, cols = matrices.shape[-2], matrices.shape[-1]
    if rows < cols:
        return tf.matmul(matrices, matrices, adjoint_b=True), True
    return tf.matmul(matrices, matrices, adjoint_a=True), False


def clip_singular_values(matrices, lip):
    """``U min(S, lip) V^H`` for a batch of (real or complex) matrices.

    Computed from the Hermitian eigendecomposition of the smaller Gram
    matrix ``G = V S^2 V^H``: ``M V diag(min(1, lip/s)) V^H``, which is
    several times faster than an SVD on a CPU.
    """
    gram, left = _gram_side(matrices)
    eigenvalues, vectors = tf.linalg.eigh(gram)
    singular = tf.sqrt(tf.maximum(tf.math.real(eigenvalues), 0.0))
    factor = tf.minimum(1.0, tf.cast(lip, singular.dtype) / tf.maximum(singular, 1e-30))
    shrink = tf.matmul(vectors * tf.cast(factor, vectors.dtype)[..., None, :], vectors,
                       adjoint_b=True)
    return tf.matmul(shrink, matrices) if left else tf.matmul(matrices, shrink)


def largest_singular_value(matrices):
    """The largest singular value over a batch of matrices."""
    gram, _ = _gram_side(matrices)
    largest = tf.reduce_max(tf.math.real(tf.linalg.eigvalsh(gram)))
    return tf.sqrt(tf.maximum(largest, 0.0))


def check_embeddable(geometry, kernel_shape, where):
    """``ValueError`` unless the orthogonal projection applies: a circular
    convolution whose taps land on distinct pixels of its input grid."""
    if geometry.kind == operators.DENSE:
        return
    if geometry.padding != "circular":
        raise ValueError(
            f"{where}: mode='orthogonal' needs the exact spectrum of a periodic "
            f"convolution, but this Conv2D pads with {geometry.padding!r}. Use "
            "mode='radial', or keras_capacity.CircularConv2D."
        )
    rows, cols = circular.tap_positions(geometry, kernel_shape)
    if len(set(rows)) < len(rows) or len(set(cols)) < len(cols):
        raise ValueError(
            f"{where}: the kernel {tuple(kernel_shape[:2])} (dilation "
            f"{geometry.dilation}) wraps onto itself on the {geometry.input_size} "
            "input, so mode='orthogonal' cannot separate its taps. Use a kernel "
            "that fits the input (as keras_capacity.models do) or mode='radial'."
        )


class CircularEmbedding:
    """Maps a circular convolution's kernel to and from its input grid."""

    def __init__(self, geometry, kernel_shape):
        self.size = tuple(geometry.input_size)
        self.kernel_shape = tuple(kernel_shape)
        rows, cols = circular.tap_positions(geometry, kernel_shape)
        # Flat grid index of every tap, in the kernel's (kh, kw) order.
        index = (rows[:, None] * self.size[1] + cols[None, :]).reshape(-1, 1)
        self.index = tf.constant(index, tf.int32)
        mask = np.zeros(self.size[0] * self.size[1], np.float32)
        mask[index.ravel()] = 1.0
        self.mask = tf.constant(mask.reshape(*self.size, 1, 1))

    def embed(self, kernel):
        kh, kw, cin, cout = self.kernel_shape
        flat = tf.reshape(kernel, (kh * kw, cin, cout))
        grid = tf.scatter_nd(self.index, flat, (self.size[0] * self.size[1], cin, cout))
        return tf.reshape(grid, (*self.size, cin, cout))

    def restrict(self, grid):
        cin, cout = self.kernel_shape[2:]
        flat = tf.reshape(grid, (-1, cin, cout))
        return tf.reshape(tf.gather_nd(flat, self.index), self.kernel_shape)

    def project_support(self, grid):
        return grid * tf.cast(self.mask, grid.dtype)

    def project_spectral_ball(self, grid, lip):
        """Clips the per-frequency singular values of the embedded kernel."""
        height, width = self.size
        spatial_last = tf.transpose(grid, (2, 3, 0, 1))  # (in, out, H, W)
        spectrum = tf.signal.rfft2d(spatial_last)  # (in, out, H, W//2+1)
        matrices = tf.transpose(spectrum, (2, 3, 0, 1))  # (H, W//2+1, in, out)
        clipped = tf.transpose(clip_singular_values(matrices, lip), (2, 3, 0, 1))
        back = tf.signal.irfft2d(clipped, fft_length=(height, width))
        return tf.transpose(back, (2, 3, 0, 1))


def dykstra(point, project_fns, rounds):
    """Dykstra's alternating projections onto the intersection of convex
    sets: ``rounds`` passes over ``project_fns`` (the last one's output is
    returned, so it lies in the last set exactly)."""
    increments = [tf.zeros_like(point) for _ in project_fns]
    for _ in range(rounds):
        for i, project in enumerate(project_fns):
            shifted = point + increments[i]
            point = project(shifted)
            increments[i] = shifted - point
    return point


def project(kernel, initial_kernel, lip, dist, geometry, rounds):
    """The orthogonal projection of ``kernel`` onto ``{Lip <= lip} ∩
    {||K - K0||_{2,1} <= dist}`` by ``rounds`` of Dykstra's algorithm,
    followed by the feasibility step: a radial rescale by the exact norm
    (:func:`keras_capacity.circular.spectral_norm`; the stride-1 one, an
    upper bound, where strides do not divide the input) if it is still
    above ``lip``, then the segment toward
    ``K0`` into the distance ball. Returns the kernel."""
    has_lip, has_dist = np.isfinite(lip), np.isfinite(dist)

    def distance_ball(x):
        return initial_kernel + projections.project_l21_ball(x - initial_kernel, dist)

    if geometry.kind == operators.DENSE:
        sets = ([distance_ball] if has_dist else []) + (
            [lambda x: clip_singular_values(x, lip)] if has_lip else [])
        result = dykstra(kernel, sets, rounds if len(sets) > 1 else 1)
        norm = largest_singular_value(result) if has_lip else None
    else:
        embedding = CircularEmbedding(geometry, kernel.shape)

        def grid_distance_ball(grid):
            on_support = embedding.restrict(grid)
            projected = embedding.embed(
                initial_kernel + projections.project_l21_ball(on_support - initial_kernel, dist)
            )
            return grid - embedding.project_support(grid) + projected

        sets = ([grid_distance_ball] if has_dist else []) + (
            [lambda g: embedding.project_spectral_ball(g, lip)] if has_lip else [])
        sets.append(embedding.project_support)
        result = embedding.restrict(dykstra(embedding.embed(kernel), sets, rounds))
        if has_lip:
            if not circular.strides_divide(geometry):
                geometry = dataclasses.replace(geometry, strides=(1, 1))
            norm = circular.spectral_norm(result, geometry)
    if has_lip:
        result = projections.scale_to_lipschitz(result, norm, lip)
    if has_dist:
        result = initial_kernel + projections.shrink_to_l21_ball(result - initial_kernel, dist)
    return result
