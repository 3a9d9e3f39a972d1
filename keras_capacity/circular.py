"""Exact spectral norms of circular convolutions, in TensorFlow (SPEC §2).

A circular convolution on an ``H x W`` input is block-diagonalized by the
2-D DFT: at every frequency ``f`` it acts as the ``out x in`` matrix
``A(f) = sum_p K_p^T e^{i theta_p(f)}`` (``K_p`` the ``in x out`` tap at
grid offset ``x_p``). With strides ``(s_h, s_w)`` dividing the input, the
subsampling folds the ``S = s_h s_w`` aliases of each output frequency
``g`` together, and ``||A||_2^2 = max_g lambda_max(sum_f A(f) A(f)^H) / S``
over the aliases ``f`` of ``g``.

Two ways to the same eigenvalues, whichever decomposes smaller matrices:

* **Output side** (``out <= in S``): ``A(f) A(f)^H`` is the DFT of the
  kernel's autocorrelation ``C_d = sum_{x_p - x_q = d} K_p^T K_q``, and
  summing over aliases keeps exactly the offsets ``d`` on the stride
  lattice, so the folded Gram matrices are the DFT, on the ``H/s_h x W/s_w``
  output grid, of ``C`` subsampled at multiples of the stride. That costs a
  few small matrix products instead of a product per frequency, and the
  symmetry ``C_{-d} = C_d^T`` (the matrices at ``-f`` are the conjugates)
  halves the decompositions.
* **Input side** (``out > in S``): the FFT of the kernel embedded in the
  input grid gives every ``A(f)``; each output frequency's ``S`` aliases
  form one ``(in S) x out`` block, whose small Gram matrix is decomposed.

Everything is TensorFlow, so it runs inside the compiled train step, where
it makes the Lipschitz constant of :class:`keras_capacity.LipDist` exact.
"""

import math

import numpy as np
import tensorflow as tf

from keras_capacity import operators

# The train step uses the exact norm when (decomposed matrices) x (their
# side)^3 is at most this: e.g. 128 channels on a 32x32 input (stride 1),
# about 0.2 s on 2 CPU cores, against minutes for one epoch of such a layer.
# Beyond it the norm is tracked by subspace iteration instead.
EXACT_COST_LIMIT = 2**31


def tap_positions(geometry, kernel_shape):
    """Grid offsets ``(rows, cols)`` of the kernel's taps, modulo the grid:
    tap ``a`` sits at ``d a - p`` (``d`` the dilation, ``p`` the periodic
    padding before, as :func:`keras_capacity.operators.circular_pad`)."""
    offsets = []
    for axis in range(2):
        size, taps, dilation = geometry.input_size[axis], kernel_shape[axis], geometry.dilation[axis]
        span = dilation * (taps - 1) + 1
        offsets.append((np.arange(taps) * dilation - (span - 1) // 2) % size)
    return offsets


def strides_divide(geometry):
    """Whether the strides divide the input size (the folding needs it)."""
    return all(size % stride == 0 for size, stride in zip(geometry.input_size, geometry.strides))


def _plan(geometry, kernel_shape):
    """``(side, matrices, n)``: which Gram matrices are decomposed, how many
    (at most), and their size."""
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    out_h, out_w = height // s_h, width // s_w
    channels_in, channels_out = int(kernel_shape[2]), int(kernel_shape[3])
    if channels_out <= channels_in * s_h * s_w:
        return "output", (out_h * out_w) // 2 + 2, channels_out  # one of each pair f, -f
    return "input", out_h * out_w, channels_in * s_h * s_w


def has_exact_norm(geometry, kernel_shape):
    """Whether :func:`spectral_norm` applies and is cheap enough for the
    train step (a circular convolution whose strides divide its input, within
    ``EXACT_COST_LIMIT``)."""
    if geometry.kind != operators.CONV2D or geometry.padding != "circular":
        return False
    if not strides_divide(geometry):
        return False
    _, matrices, n = _plan(geometry, kernel_shape)
    return matrices * n**3 <= EXACT_COST_LIMIT


class LatticePairs:
    """The kernel's tap pairs whose offset lies on the stride lattice.

    For taps ``p, q`` at grid offsets ``x_p, x_q``, the pair is kept when
    ``d = x_p - x_q`` (modulo the grid) is a multiple of the strides; ``d /
    s`` is then a cell of the ``H/s_h x W/s_w`` output grid. These pairs
    carry both the folded Gram matrices (:meth:`grams`) and the products of
    the kernel with a per-frequency matrix (:meth:`multiply`), at one
    frequency of every conjugate pair ``f, -f`` of the output grid (about
    half of them; a real kernel's matrices at ``-f`` are the conjugates).
    The few pairs make a direct DFT (real matrix products) cheaper than
    scattering onto the grid and transforming it.
    """

    def __init__(self, geometry, kernel_shape):
        kh, kw = int(kernel_shape[0]), int(kernel_shape[1])
        (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
        out_h, out_w = height // s_h, width // s_w
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        rows, cols = tap_positions(geometry, kernel_shape)
        tap_rows, tap_cols = np.repeat(rows, kw), np.tile(cols, kh)  # tap t = a * kw + b
        d_rows = (tap_rows[:, None] - tap_rows[None, :]) % height
        d_cols = (tap_cols[:, None] - tap_cols[None, :]) % width
        self.p, self.q = np.nonzero((d_rows % s_h == 0) & (d_cols % s_w == 0))
        cell_rows, cell_cols = d_rows[self.p, self.q] // s_h, d_cols[self.p, self.q] // s_w
        # One frequency of every conjugate pair f, -f of the output grid:
        # the Gram matrices at -f are the conjugates, with the same spectra.
        freq_rows, freq_cols = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
        freq_rows, freq_cols = freq_rows.ravel(), freq_cols.ravel()
        flat, conjugate = freq_rows * out_w + freq_cols, (-freq_rows % out_h) * out_w + (-freq_cols % out_w)
        keep = flat <= conjugate
        freq_rows, freq_cols = freq_rows[keep], freq_cols[keep]
        # theta[f, pair] = 2 pi <f, d / s> on the output grid.
        self.theta = 2 * np.pi * (
            freq_rows[:, None] * cell_rows[None, :] / out_h
            + freq_cols[:, None] * cell_cols[None, :] / out_w
        )
        # A real inverse DFT from these counts every frequency whose
        # conjugate is another one twice.
        own_conjugate = (flat == conjugate)[keep]
        self.inverse_weights = np.where(own_conjugate, 1.0, 2.0)[:, None] / (out_h * out_w)

    def _taps(self, kernel):
        kh, kw, channels_in, channels_out = self.kernel_shape
        return tf.reshape(kernel, (kh * kw, channels_in, channels_out))

    def grams(self, kernel):
        """``sum_f A(f) A(f)^H / S`` over the aliases of every output
        frequency: the DFT, on the output grid, of the autocorrelation
        ``sum K_p^T K_q`` at the lattice offsets; ``(frequencies, out, out)``."""
        taps = self._taps(kernel)
        channels_out = self.kernel_shape[3]
        products = tf.matmul(tf.gather(taps, self.p), tf.gather(taps, self.q), transpose_a=True)
        products = tf.reshape(products, (len(self.p), channels_out * channels_out))
        real = tf.matmul(tf.constant(np.cos(self.theta), kernel.dtype), products)
        imaginary = tf.matmul(tf.constant(-np.sin(self.theta), kernel.dtype), products)
        return tf.reshape(tf.complex(real, imaginary), (-1, channels_out, channels_out))

    def multiply(self, kernel, matrices):
        """The kernel whose every spectrum matrix ``M(f)`` (on its input
        grid) is replaced by ``M(f) T(f)``, restricted to the kernel's taps.

        ``T`` (``out x out``, periodic on the output grid) is given as
        ``matrices`` at the frequencies of :meth:`grams` (and is
        Hermitian-symmetric, ``T(-f)`` the conjugate of ``T(f)``, as a
        function of those Gram matrices is). In space this is the kernel
        convolved with ``T``'s inverse DFT, which lives on the stride
        lattice, so tap ``p`` gets ``sum_q K_q T^(x_q - x_p)`` over the lattice
        pairs.
        """
        channels_out = self.kernel_shape[3]
        flat = tf.reshape(matrices, (-1, channels_out * channels_out))
        # T^(-d) = sum_f w_f Re(T(f) e^{-i theta}) for every pair's d.
        cos, sin = (self.inverse_weights * np.cos(self.theta)).T, (self.inverse_weights * np.sin(self.theta)).T
        spatial = (tf.matmul(tf.constant(cos, kernel.dtype), tf.math.real(flat))
                   + tf.matmul(tf.constant(sin, kernel.dtype), tf.math.imag(flat)))
        spatial = tf.reshape(spatial, (len(self.p), channels_out, channels_out))
        taps = self._taps(kernel)
        result = tf.math.unsorted_segment_sum(
            tf.matmul(tf.gather(taps, self.q), spatial), self.p, taps.shape[0]
        )
        return tf.reshape(result, self.kernel_shape)


def fold(spectrum, strides):
    """``(in, out, H, W)`` spectrum -> ``(H/s_h * W/s_w, in S, out)`` blocks:
    each output frequency's ``S`` aliased ``in x out`` matrices, stacked."""
    channels_in, channels_out, height, width = spectrum.shape
    (s_h, s_w), out_h, out_w = strides, height // strides[0], width // strides[1]
    spectrum = tf.reshape(spectrum, (channels_in, channels_out, s_h, out_h, s_w, out_w))
    return tf.reshape(
        tf.transpose(spectrum, (3, 5, 2, 4, 0, 1)),
        (out_h * out_w, s_h * s_w * channels_in, channels_out),
    )


def unfold(blocks, strides, size):
    """The inverse of :func:`fold`, back to an ``(in, out, H, W)`` spectrum."""
    (s_h, s_w), (height, width) = strides, size
    channels_in, channels_out = blocks.shape[1] // (s_h * s_w), blocks.shape[2]
    blocks = tf.reshape(blocks, (height // s_h, width // s_w, s_h, s_w, channels_in, channels_out))
    return tf.reshape(tf.transpose(blocks, (4, 5, 2, 0, 3, 1)), (channels_in, channels_out, height, width))


def embed(kernel, geometry):
    """The kernel on its ``H x W`` input grid, ``(H, W, in, out)``; taps that
    wrap onto the same pixel add up, as in the operator."""
    kh, kw, channels_in, channels_out = kernel.shape
    height, width = geometry.input_size
    rows, cols = tap_positions(geometry, kernel.shape)
    cells = (rows[:, None] * width + cols[None, :]).reshape(-1, 1)
    taps = tf.reshape(kernel, (kh * kw, channels_in, channels_out))
    grid = tf.scatter_nd(cells, taps, (height * width, channels_in, channels_out))
    return tf.reshape(grid, (height, width, channels_in, channels_out))


def _input_grams(kernel, geometry):
    """The ``(in S) x (in S)`` Gram matrices of the folded blocks, times ``S``."""
    complex_dtype = tf.complex128 if kernel.dtype == tf.float64 else tf.complex64
    grid = tf.transpose(embed(kernel, geometry), (2, 3, 0, 1))
    blocks = fold(tf.signal.fft2d(tf.cast(grid, complex_dtype)), geometry.strides)
    return tf.matmul(blocks, blocks, adjoint_b=True)


def spectral_norm(kernel, geometry):
    """``||A||_2`` of the circular convolution ``geometry`` with ``kernel``,
    exactly (to the kernel's floating-point precision); a tensor."""
    if geometry.padding != "circular" or not strides_divide(geometry):
        raise ValueError(
            f"circular.spectral_norm needs a circular convolution whose strides "
            f"divide its input; got {geometry}."
        )
    kernel = tf.convert_to_tensor(kernel)
    side, _, _ = _plan(geometry, kernel.shape)
    if side == "output":
        grams, scale = LatticePairs(geometry, kernel.shape).grams(kernel), 1.0
    else:
        grams, scale = _input_grams(kernel, geometry), 1.0 / math.prod(geometry.strides)
    largest = tf.reduce_max(tf.math.real(tf.linalg.eigvalsh(grams)))
    return tf.sqrt(tf.maximum(largest * scale, 0.0))
