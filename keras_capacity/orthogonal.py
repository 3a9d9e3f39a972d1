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
spectral ball (the real FFT's Hermitian symmetry halves the
decompositions). With strides that divide the input, each output
frequency's aliased ``M(f)`` form one block, and clipping the blocks is the
exact projection onto the strided operator's ball. That result is supported
on the whole grid; the kernel's own support is a second (linear) set, the
distance ball a third, and Dykstra's algorithm combines them.

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


def _shrink(gram, lip):
    """``V diag(min(1, lip / s)) V^H`` from the Gram matrices ``M^H M = V
    diag(s^2) V^H``: ``M`` times it has its singular values clipped at ``lip``."""
    eigenvalues, vectors = tf.linalg.eigh(gram)
    singular = tf.sqrt(tf.maximum(tf.math.real(eigenvalues), 0.0))
    factor = tf.minimum(1.0, projections.as_dtype(lip, singular.dtype) / tf.maximum(singular, 1e-30))
    return tf.matmul(vectors * tf.cast(factor, vectors.dtype)[..., None, :], vectors,
                     adjoint_b=True)


def clip_singular_values(matrices, lip):
    """``U min(S, lip) V^H`` for a batch of (real or complex) matrices.

    Computed from the Hermitian eigendecomposition of the smaller Gram
    matrix (:func:`_shrink`), which is several times faster than an SVD on
    a CPU.
    """
    gram, left = _gram_side(matrices)
    shrink = _shrink(gram, lip)
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
    """Maps a circular convolution's kernel to and from its input grid, and
    projects it onto the Lipschitz ball there.

    The ball is that of the layer's own operator, strides included, when
    the strides divide the input; otherwise that of the stride-1 operator,
    which lies inside it (subsampling is a contraction).
    """

    def __init__(self, geometry, kernel_shape):
        self.size = tuple(geometry.input_size)
        self.kernel_shape = tuple(kernel_shape)
        self.geometry = geometry
        if not circular.strides_divide(geometry):
            self.geometry = dataclasses.replace(geometry, strides=(1, 1))
        rows, cols = circular.tap_positions(geometry, kernel_shape)
        # Flat grid index of every tap, in the kernel's (kh, kw) order.
        index = (rows[:, None] * self.size[1] + cols[None, :]).reshape(-1, 1)
        self.index = tf.constant(index, tf.int32)
        mask = np.zeros(self.size[0] * self.size[1], np.float32)
        mask[index.ravel()] = 1.0
        self.mask = tf.constant(mask.reshape(*self.size, 1, 1))

    def embed(self, kernel):
        return circular.embed(kernel, self.geometry)

    def restrict(self, grid):
        cin, cout = self.kernel_shape[2:]
        flat = tf.reshape(grid, (-1, cin, cout))
        return tf.reshape(tf.gather_nd(flat, self.index), self.kernel_shape)

    def project_support(self, grid):
        return grid * tf.cast(self.mask, grid.dtype)

    def project_spectral_ball(self, grid, lip):
        """The nearest grid kernel whose operator has norm ``<= lip``.

        Stride 1: every ``M(f)``'s singular values are clipped at ``lip``
        (real FFT, half the frequencies). Strides ``s``: the ``S = s_h s_w``
        aliases of each output frequency form one ``(in S) x out`` block
        ``X(g)`` (a re-indexing of the spectrum, so distances are kept), the
        operator's norm is ``max_g ||X(g)||_2 / sqrt(S)``, and each block's
        singular values are clipped at ``lip sqrt(S)``.
        """
        height, width = self.size
        strides = self.geometry.strides
        spatial_last = tf.transpose(grid, (2, 3, 0, 1))  # (in, out, H, W)
        if strides == (1, 1):
            spectrum = tf.signal.rfft2d(spatial_last)  # (in, out, H, W//2+1)
            matrices = tf.transpose(spectrum, (2, 3, 0, 1))  # (H, W//2+1, in, out)
            clipped = tf.transpose(clip_singular_values(matrices, lip), (2, 3, 0, 1))
            back = tf.signal.irfft2d(clipped, fft_length=(height, width))
        else:
            complex_dtype = tf.complex128 if grid.dtype == tf.float64 else tf.complex64
            blocks = circular.fold(tf.signal.fft2d(tf.cast(spatial_last, complex_dtype)), strides)
            clipped = clip_singular_values(blocks, lip * np.sqrt(np.prod(strides)))
            back = tf.math.real(tf.signal.ifft2d(circular.unfold(clipped, strides, self.size)))
        return tf.transpose(back, (2, 3, 0, 1))

    def project_kernel(self, kernel, lip):
        """``restrict(project_spectral_ball(embed(kernel)))``.

        Where the output side is the smaller one, without the grid: the
        Gram matrices come from the kernel's autocorrelation and the
        clipped kernel from the lattice pairs
        (:class:`keras_capacity.circular.LatticePairs`), so no per-frequency
        product with the spectrum is formed.
        """
        channels_in, channels_out = self.kernel_shape[2:]
        if channels_out > channels_in * np.prod(self.geometry.strides):
            return self.restrict(self.project_spectral_ball(self.embed(kernel), lip))
        pairs = circular.LatticePairs(self.geometry, self.kernel_shape)
        return pairs.multiply(kernel, _shrink(pairs.grams(kernel), lip))


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
    followed by the feasibility step: a radial rescale by the exact norm of
    the operator whose ball was projected onto
    (:func:`keras_capacity.circular.spectral_norm`) if it is still above
    ``lip``, then the segment toward ``K0`` into the distance ball. Returns
    the kernel.

    For a circular convolution, one round over (distance ball, spectral
    ball, support) carries no increments, so it is the composition of the
    three projections, done on the kernel's own taps
    (:meth:`CircularEmbedding.project_kernel`).
    """
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
        if rounds == 1:
            result = distance_ball(kernel) if has_dist else kernel
            if has_lip:
                result = embedding.project_kernel(result, lip)
        else:
            def grid_distance_ball(grid):
                on_support = embedding.restrict(grid)
                projected = embedding.embed(distance_ball(on_support))
                return grid - embedding.project_support(grid) + projected

            sets = ([grid_distance_ball] if has_dist else []) + (
                [lambda g: embedding.project_spectral_ball(g, lip)] if has_lip else [])
            sets.append(embedding.project_support)
            result = embedding.restrict(dykstra(embedding.embed(kernel), sets, rounds))
        norm = circular.spectral_norm(result, embedding.geometry) if has_lip else None
    if has_lip:
        result = projections.scale_to_lipschitz(result, norm, lip)
    if has_dist:
        result = initial_kernel + projections.shrink_to_l21_ball(result - initial_kernel, dist)
    return result
