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
  real FFT's symmetry (``C_{-d} = C_d^T``) halves the decompositions.
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
    """``(side, matrices, n)``: which Gram matrices are decomposed, how many,
    and their size."""
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    out_h, out_w = height // s_h, width // s_w
    channels_in, channels_out = int(kernel_shape[2]), int(kernel_shape[3])
    if channels_out <= channels_in * s_h * s_w:
        return "output", out_h * (out_w // 2 + 1), channels_out
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


def _output_grams(kernel, geometry):
    """``sum_f A(f) A(f)^H / S`` for every output frequency (half of them)."""
    kh, kw, channels_in, channels_out = kernel.shape
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    out_h, out_w = height // s_h, width // s_w
    rows, cols = tap_positions(geometry, kernel.shape)
    tap_rows, tap_cols = np.repeat(rows, kw), np.tile(cols, kh)  # tap t = a * kw + b
    d_rows = (tap_rows[:, None] - tap_rows[None, :]) % height
    d_cols = (tap_cols[:, None] - tap_cols[None, :]) % width
    p, q = np.nonzero((d_rows % s_h == 0) & (d_cols % s_w == 0))
    cells = (d_rows[p, q] // s_h) * out_w + d_cols[p, q] // s_w
    taps = tf.reshape(kernel, (kh * kw, channels_in, channels_out))
    products = tf.einsum("tio,tiu->tou", tf.gather(taps, p), tf.gather(taps, q))
    correlation = tf.scatter_nd(cells[:, None], products, (out_h * out_w, channels_out, channels_out))
    correlation = tf.reshape(correlation, (out_h, out_w, channels_out, channels_out))
    spectrum = tf.signal.rfft2d(tf.transpose(correlation, (2, 3, 0, 1)))
    return tf.reshape(tf.transpose(spectrum, (2, 3, 0, 1)), (-1, channels_out, channels_out))


def _input_grams(kernel, geometry):
    """The ``(in S) x (in S)`` Gram matrices of the folded blocks, times ``S``."""
    kh, kw, channels_in, channels_out = kernel.shape
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    out_h, out_w = height // s_h, width // s_w
    rows, cols = tap_positions(geometry, kernel.shape)
    cells = (rows[:, None] * width + cols[None, :]).reshape(-1, 1)
    taps = tf.reshape(kernel, (kh * kw, channels_in, channels_out))
    # Taps that wrap onto the same pixel add up, as in the operator.
    grid = tf.scatter_nd(cells, taps, (height * width, channels_in, channels_out))
    grid = tf.reshape(grid, (height, width, channels_in, channels_out))
    complex_dtype = tf.complex128 if kernel.dtype == tf.float64 else tf.complex64
    spectrum = tf.signal.fft2d(tf.cast(tf.transpose(grid, (2, 3, 0, 1)), complex_dtype))
    spectrum = tf.reshape(spectrum, (channels_in, channels_out, s_h, out_h, s_w, out_w))
    blocks = tf.reshape(
        tf.transpose(spectrum, (3, 5, 2, 4, 0, 1)),
        (out_h * out_w, s_h * s_w * channels_in, channels_out),
    )
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
        grams, scale = _output_grams(kernel, geometry), 1.0
    else:
        grams, scale = _input_grams(kernel, geometry), 1.0 / math.prod(geometry.strides)
    largest = tf.reduce_max(tf.math.real(tf.linalg.eigvalsh(grams)))
    return tf.sqrt(tf.maximum(largest * scale, 0.0))
