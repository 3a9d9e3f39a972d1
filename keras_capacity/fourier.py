"""The Fourier side of circular convolutions, in one place (SPEC §2-3).

A circular convolution on an ``H x W`` input is block-diagonalized by the
2-D DFT: at every frequency ``f`` it acts as the ``out x in`` matrix
``A(f) = sum_p K_p^T e^{i theta_p(f)}`` (``K_p`` the ``in x out`` tap at
grid offset ``x_p``, `tap_positions`). With strides ``(s_h, s_w)``
dividing the input (`strides_divide`), subsampling folds the
``S = s_h s_w`` aliases of each output frequency ``g`` together, and
``||A||_2^2 = max_g lambda_max(sum_f A(f) A(f)^H) / S`` over the aliases
``f`` of ``g``. Two ways to the same Gram matrices, whichever decomposes
the smaller ones (`plan`):

* **output side** (``out <= in S``): ``A(f) A(f)^H`` is the DFT of the
  kernel's autocorrelation ``C_d = sum_{x_p - x_q = d} K_p^T K_q``, and
  summing over aliases keeps the offsets ``d`` on the stride lattice, so
  the folded Gram matrices are a direct DFT over the few tap pairs
  (`LatticePairs`), at one frequency of every conjugate pair; at stride 1,
  where fewer multiply-adds, ``B(f)^H B(f)`` from each frequency's own
  spectrum, a direct DFT over the taps;
* **input side** (``out > in S``): the FFT of the kernel embedded in its
  input grid (`embed`) gives every ``A(f)``; each output frequency's
  ``S`` aliases form one ``(in S) x out`` block (`fold`).

On top of these: the exact spectral norm (`spectral_norm`), and the
orthogonal projection onto the operator's spectral ball
(`CircularEmbedding`, by clipping the per-frequency singular values).
Everything is ``keras.ops`` and `keras_capacity.backend` (complex FFT,
Hermitian eigendecompositions), so it runs inside the compiled train step.
"""

import math

import numpy as np
from keras import ops

from keras_capacity import backend, operators, projections

# The train step uses the exact norm when (decomposed matrices) x (their
# side)^3 is at most this: e.g. 128 channels on a 32x32 input (stride 1),
# about 0.2 s on 2 CPU cores, against minutes for one epoch of such a layer.
# Beyond it the norm is tracked (keras_capacity.lipschitz_estimators).
EXACT_COST_LIMIT = 2**31
# A complex matrix product against a real one of the same size: four real
# products' multiply-adds, at about two thirds of their speed on the CPU
# (`LatticePairs.uses_spectra`, measured with TensorFlow on 2 cores).
COMPLEX_PRODUCT_COST = 6


def tap_positions(geometry, kernel_shape):
    """Grid offsets ``(rows, cols)`` of the kernel's taps, modulo the grid:
    tap ``a`` sits at ``d a - p`` (``d`` the dilation, ``p`` the periodic
    padding before, as `keras_capacity.operators.circular_pad`)."""
    offsets = []
    for axis in range(2):
        size, taps, dilation = (
            geometry.input_size[axis],
            kernel_shape[axis],
            geometry.dilation[axis],
        )
        span = dilation * (taps - 1) + 1
        offsets.append((np.arange(taps) * dilation - (span - 1) // 2) % size)
    return offsets


def strides_divide(geometry):
    """Whether the strides divide the input size (the folding needs it)."""
    pairs = zip(geometry.input_size, geometry.strides, strict=True)
    return all(size % stride == 0 for size, stride in pairs)


def plan(geometry, kernel_shape):
    """``(side, matrices, n)``: which Gram matrices are decomposed, at most
    how many, and their size."""
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    out_h, out_w = height // s_h, width // s_w
    channels_in, channels_out = int(kernel_shape[2]), int(kernel_shape[3])
    if channels_out <= channels_in * s_h * s_w:
        return "output", (out_h * out_w) // 2 + 2, channels_out  # one of each pair f, -f
    return "input", out_h * out_w, channels_in * s_h * s_w


def is_circular(geometry):
    return geometry.kind == operators.CONV2D and geometry.padding == "circular"


def ungrouped_shape(geometry, kernel_shape):
    """The kernel shape of the plain convolution a grouped one equals
    (`keras_capacity.operators.ungrouped`)."""
    return (*kernel_shape[:-2], int(kernel_shape[-2]) * geometry.groups, int(kernel_shape[-1]))


def has_exact_norm(geometry, kernel_shape):
    """Whether `spectral_norm` applies and is cheap enough for the
    train step (a circular convolution whose strides divide its input,
    within ``EXACT_COST_LIMIT``; a grouped one costs what the plain
    convolution it equals does)."""
    if not is_circular(geometry) or not strides_divide(geometry):
        return False
    _, matrices, n = plan(geometry, ungrouped_shape(geometry, kernel_shape))
    return matrices * n**3 <= EXACT_COST_LIMIT


def _taps(kernel, kernel_shape):
    kh, kw, channels_in, channels_out = kernel_shape
    return ops.reshape(kernel, (kh * kw, channels_in, channels_out))


class LatticePairs:
    """The kernel's tap pairs whose offset lies on the stride lattice.

    For taps ``p, q`` at grid offsets ``x_p, x_q``, the pair is kept when
    ``d = x_p - x_q`` (modulo the grid) is a multiple of the strides; ``d /
    s`` is then a cell of the ``H/s_h x W/s_w`` output grid. These pairs
    carry both the folded Gram matrices (`grams`) and the products of
    the kernel with a per-frequency matrix (`multiply`), at one
    frequency of every conjugate pair ``f, -f`` of the output grid (about
    half of them; a real kernel's matrices at ``-f`` are the conjugates).
    The few pairs make a direct DFT (real matrix products) cheaper than
    scattering onto the grid and transforming it.

    Where the taps are few against the frequencies asked for they are
    cheaper still, and at stride 1 the same matrices also come from each
    frequency's own ``in x out`` spectrum ``B(g) = sum_p K_p e^{i phi_p(g)}``
    (``phi_p(g) = 2 pi <g, x_p>`` on the grid): ``B^H B`` is the Gram
    matrix, and a product ``B T`` is taken back to the taps by the inverse
    DFT at the taps' offsets alone. The pairs cost ``P in out^2``
    multiply-adds for every block at once, the spectra ``in out^2`` per
    real block and six times that per complex one (`uses_spectra`,
    `COMPLEX_PRODUCT_COST`): the deep layers of the paper's ResNet, whose
    3x3 or 2x2 taps nearly fill their 4x4 or 2x2 grids, and a screened
    projection that decomposes a few blocks take the spectra.
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
        flat = freq_rows * out_w + freq_cols
        conjugate = (-freq_rows % out_h) * out_w + (-freq_cols % out_w)
        keep = flat <= conjugate
        freq_rows, freq_cols = freq_rows[keep], freq_cols[keep]
        # theta[f, pair] = 2 pi <f, d / s> on the output grid.
        theta = (
            2
            * np.pi
            * (
                freq_rows[:, None] * cell_rows[None, :] / out_h
                + freq_cols[:, None] * cell_cols[None, :] / out_w
            )
        )
        # A real inverse DFT from these counts every frequency whose
        # conjugate is another one twice.
        own_conjugate = (flat == conjugate)[keep]
        weights = np.where(own_conjugate, 1.0, 2.0)[:, None] / (out_h * out_w)
        # The frequencies that are their own conjugates (2 f = 0 on the grid)
        # have real Gram matrices: they are decomposed in real arithmetic.
        self.theta_real, self.theta_complex = theta[own_conjugate], theta[~own_conjugate]
        self.weights_real, self.weights_complex = weights[own_conjugate], weights[~own_conjugate]
        # At stride 1, phi[f, tap] = 2 pi <f, x_tap> (the spectra's route);
        # None where the strides fold aliases together.
        self.phi_real = self.phi_complex = None
        if (s_h, s_w) == (1, 1):
            phi = (
                2
                * np.pi
                * (
                    freq_rows[:, None] * tap_rows[None, :] / height
                    + freq_cols[:, None] * tap_cols[None, :] / width
                )
            )
            self.phi_real, self.phi_complex = phi[own_conjugate], phi[~own_conjugate]

    @property
    def counts(self):
        """``(real, complex)``: how many blocks of each kind `grams` gives."""
        return len(self.theta_real), len(self.theta_complex)

    def uses_spectra(self, index=None):
        """Whether `grams` and `multiply` of the blocks ``index`` (as
        there) go through the frequencies' spectra rather than the tap
        pairs: at stride 1, where that costs fewer multiply-adds."""
        if self.phi_real is None:
            return False
        taps = self.kernel_shape[0] * self.kernel_shape[1]
        channels_in, channels_out = self.kernel_shape[2:]
        real, other = (
            self.counts
            if index is None
            else (0 if rows is None else int(rows.shape[0]) for rows in index)
        )
        pairs = (
            len(self.p) * channels_in * channels_out**2
            + (real + 2 * other) * len(self.p) * channels_out**2
        )
        spectra = (real + COMPLEX_PRODUCT_COST * other) * channels_in * channels_out**2 + 2 * (
            real + 2 * other
        ) * taps * channels_in * channels_out
        return spectra < pairs

    def grams(self, kernel, index=None):
        """``sum_f A(f) A(f)^H / S`` over the aliases of every output
        frequency, as ``(real, complex)`` batches ``(frequencies, out,
        out)``: the frequencies that are their own conjugates give real
        matrices (``None`` where there are none). ``index``: ``(real rows,
        complex rows)`` (integer tensors) to form only those blocks, in
        that order. By the cheaper route (`uses_spectra`)."""
        if self.uses_spectra(index):
            return self.grams_from_spectra(kernel, index)
        return self.grams_from_pairs(kernel, index)

    def grams_from_pairs(self, kernel, index=None):
        """`grams` as the DFT, on the output grid, of the autocorrelation
        ``sum K_p^T K_q`` at the lattice offsets."""
        taps = _taps(kernel, self.kernel_shape)
        channels_out = self.kernel_shape[3]
        products = ops.matmul(
            ops.transpose(ops.take(taps, self.p, axis=0), (0, 2, 1)), ops.take(taps, self.q, axis=0)
        )
        products = ops.reshape(products, (len(self.p), channels_out * channels_out))
        shape = (-1, channels_out, channels_out)
        real_rows, complex_rows = (None, None) if index is None else index

        def dft(phase, rows):
            phase = ops.convert_to_tensor(phase, kernel.dtype)
            if rows is not None:
                phase = ops.take(phase, rows, axis=0)
            return ops.reshape(ops.matmul(phase, products), shape)

        real = dft(np.cos(self.theta_real), real_rows) if len(self.theta_real) else None
        other = None
        if len(self.theta_complex):
            other = backend.complex(
                dft(np.cos(self.theta_complex), complex_rows),
                dft(-np.sin(self.theta_complex), complex_rows),
            )
        return real, other

    def block_frobenius(self, delta):
        """``||X(g)||_F`` of every block of the kernel ``delta`` (the real
        frequencies first, then the complex ones, as `grams`): the
        square root of its Gram matrix's trace, which is the DFT of the tap
        pairs' inner products ``<K_p, K_q>`` (the imaginary parts of the
        pairs ``(p, q)``, ``(q, p)`` cancel). One product of a (blocks x
        pairs) matrix with a vector: no Gram matrix is formed."""
        flat = ops.reshape(delta, (self.kernel_shape[0] * self.kernel_shape[1], -1))
        inner = ops.sum(ops.take(flat, self.p, axis=0) * ops.take(flat, self.q, axis=0), axis=1)
        phase = np.cos(np.concatenate([self.theta_real, self.theta_complex]))
        squares = ops.matmul(ops.convert_to_tensor(phase, delta.dtype), inner)
        return ops.sqrt(ops.maximum(squares, 0.0))

    def _spectra(self, kernel, phi, trig, rows):
        """``sum_p K_p trig(phi_p(f))`` at the frequencies ``rows`` of
        ``phi``: ``(frequencies, in, out)``, real."""
        flat = ops.reshape(_taps(kernel, self.kernel_shape), (phi.shape[1], -1))
        phase = ops.convert_to_tensor(trig(phi), kernel.dtype)
        if rows is not None:
            phase = ops.take(phase, rows, axis=0)
        return ops.reshape(ops.matmul(phase, flat), (-1, *self.kernel_shape[2:]))

    def _complex_spectra(self, kernel, rows):
        return backend.complex(
            self._spectra(kernel, self.phi_complex, np.cos, rows),
            self._spectra(kernel, self.phi_complex, np.sin, rows),
        )

    def grams_from_spectra(self, kernel, index=None):
        """`grams` at stride 1 as ``B(g)^H B(g)``, ``B(g) = sum_p K_p e^{i
        phi_p(g)}`` the ``in x out`` spectrum of each frequency asked for."""
        real_rows, complex_rows = (None, None) if index is None else index
        real = other = None
        if len(self.phi_real):
            spectra = self._spectra(kernel, self.phi_real, np.cos, real_rows)
            real = ops.matmul(ops.swapaxes(spectra, -1, -2), spectra)
        if len(self.phi_complex):
            spectra = self._complex_spectra(kernel, complex_rows)
            other = backend.matmul(projections.adjoint(spectra), spectra)
        return real, other

    def multiply(self, kernel, real, other, index=None):
        """The kernel whose every spectrum matrix ``M(f)`` (on its input
        grid) is replaced by ``M(f) T(f)``, restricted to the kernel's taps,
        for ``T`` given at the frequencies of `grams` (``real, other``,
        ``index`` as there); by the cheaper route (`uses_spectra`), as
        `multiply_by_pairs` and `multiply_by_spectra` say."""
        if self.uses_spectra(index):
            return self.multiply_by_spectra(kernel, real, other, index)
        return self.multiply_by_pairs(kernel, real, other, index)

    def multiply_by_spectra(self, kernel, real, other, index=None):
        """`multiply` at stride 1 through the spectra: tap ``p`` of the
        result is ``sum_g w_g Re(e^{-i phi_p(g)} B(g) T(g))`` over the
        frequencies given (``w_g`` counts a frequency and its conjugate,
        over the grid's size)."""
        real_rows, complex_rows = (None, None) if index is None else index
        flat_shape = (-1, self.kernel_shape[2] * self.kernel_shape[3])

        def back(weights, phi, trig, part, rows):
            # (taps x frequencies) phases times each frequency's flat product.
            phase = ops.convert_to_tensor((weights * trig(phi)).T, kernel.dtype)
            if rows is not None:
                phase = ops.take(phase, rows, axis=1)
            return ops.matmul(phase, ops.reshape(part, flat_shape))

        terms = []
        if real is not None:
            product = ops.matmul(self._spectra(kernel, self.phi_real, np.cos, real_rows), real)
            terms.append(back(self.weights_real, self.phi_real, np.cos, product, real_rows))
        if other is not None:
            product = backend.matmul(self._complex_spectra(kernel, complex_rows), other)
            for part, trig in ((ops.real(product), np.cos), (ops.imag(product), np.sin)):
                terms.append(back(self.weights_complex, self.phi_complex, trig, part, complex_rows))
        return ops.reshape(sum(terms), self.kernel_shape)

    def multiply_by_pairs(self, kernel, real, other, index=None):
        """`multiply` through the lattice pairs.

        ``T`` (``out x out``, periodic on the output grid) is given as
        ``real, other`` at the frequencies of `grams` (and is
        Hermitian-symmetric, ``T(-f)`` the conjugate of ``T(f)``, as a
        function of those Gram matrices is); with ``index`` (as for
        `grams`) only at those rows, ``T`` being zero elsewhere. In
        space this is the kernel convolved with ``T``'s inverse DFT, which
        lives on the stride lattice, so tap ``p`` gets ``sum_q K_q T^(x_q -
        x_p)`` over the lattice pairs.
        """
        channels_out = self.kernel_shape[3]
        real_rows, complex_rows = (None, None) if index is None else index

        def inverse(weights, theta, part, trig, rows):
            # T^(-d) = sum_f w_f Re(T(f) e^{-i theta}) for every pair's d.
            flat = ops.reshape(part, (-1, channels_out * channels_out))
            phase = ops.convert_to_tensor((weights * trig(theta)).T, kernel.dtype)
            if rows is not None:
                phase = ops.take(phase, rows, axis=1)
            return ops.matmul(phase, flat)

        terms = []
        if real is not None:
            terms.append(inverse(self.weights_real, self.theta_real, real, np.cos, real_rows))
        if other is not None:
            for part, trig in ((ops.real(other), np.cos), (ops.imag(other), np.sin)):
                terms.append(
                    inverse(self.weights_complex, self.theta_complex, part, trig, complex_rows)
                )
        spatial = ops.reshape(sum(terms), (len(self.p), channels_out, channels_out))
        taps = _taps(kernel, self.kernel_shape)
        result = ops.segment_sum(
            ops.matmul(ops.take(taps, self.q, axis=0), spatial),
            ops.convert_to_tensor(self.p, "int32"),
            num_segments=taps.shape[0],
        )
        return ops.reshape(result, self.kernel_shape)


def fold(spectrum, strides):
    """``(in, out, H, W)`` spectrum -> ``(H/s_h * W/s_w, in S, out)`` blocks:
    each output frequency's ``S`` aliased ``in x out`` matrices, stacked."""
    channels_in, channels_out, height, width = spectrum.shape
    (s_h, s_w), out_h, out_w = strides, height // strides[0], width // strides[1]
    spectrum = ops.reshape(spectrum, (channels_in, channels_out, s_h, out_h, s_w, out_w))
    return ops.reshape(
        ops.transpose(spectrum, (3, 5, 2, 4, 0, 1)),
        (out_h * out_w, s_h * s_w * channels_in, channels_out),
    )


def unfold(blocks, strides, size):
    """The inverse of `fold`, back to an ``(in, out, H, W)`` spectrum."""
    (s_h, s_w), (height, width) = strides, size
    channels_in, channels_out = blocks.shape[1] // (s_h * s_w), blocks.shape[2]
    blocks = ops.reshape(blocks, (height // s_h, width // s_w, s_h, s_w, channels_in, channels_out))
    return ops.reshape(
        ops.transpose(blocks, (4, 5, 2, 0, 3, 1)), (channels_in, channels_out, height, width)
    )


def embed(kernel, geometry):
    """The kernel on its ``H x W`` input grid, ``(H, W, in, out)``; taps that
    wrap onto the same pixel add up, as in the operator."""
    kh, kw, channels_in, channels_out = kernel.shape
    height, width = geometry.input_size
    rows, cols = tap_positions(geometry, kernel.shape)
    cells = (rows[:, None] * width + cols[None, :]).reshape(-1)
    grid = ops.segment_sum(
        _taps(kernel, kernel.shape),
        ops.convert_to_tensor(cells, "int32"),
        num_segments=height * width,
    )
    return ops.reshape(grid, (height, width, channels_in, channels_out))


def self_conjugate(height, columns, width):
    """Which of the ``height x columns`` frequencies of a real FFT on an
    ``height x width`` grid are their own conjugates (``2 f = 0``): there
    a real kernel's matrices are real."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(columns), indexing="ij")
    return ((2 * rows) % height == 0) & ((2 * cols) % width == 0)


def _input_grams(kernel, geometry):
    """``(real, complex)`` batches of the ``(in S) x (in S)`` Gram matrices
    of the folded blocks, times ``S``. Stride 1: a real FFT (half the
    frequencies), the self-conjugate ones in real arithmetic."""
    grid = ops.transpose(embed(kernel, geometry), (2, 3, 0, 1))  # (in, out, H, W)
    if geometry.strides != (1, 1):
        blocks = fold(backend.fft2(grid), geometry.strides)
        return None, backend.matmul(blocks, projections.adjoint(blocks))
    spectrum = ops.transpose(backend.rfft2(grid), (2, 3, 0, 1))  # (H, W//2+1, in, out)
    height, width = geometry.input_size
    real, other = projections.split_real_rows(
        spectrum, self_conjugate(height, width // 2 + 1, width).ravel()
    )
    grams = [None if m is None else projections.gram_side(m)[0] for m in (real, other)]
    return tuple(grams)


def spectral_norm(kernel, geometry):
    """``||A||_2`` of the circular convolution ``geometry`` with ``kernel``,
    exactly (to the kernel's floating-point precision); a tensor. A grouped
    convolution is taken as the block-diagonal plain one it equals."""
    if not is_circular(geometry) or not strides_divide(geometry):
        raise ValueError(
            f"fourier.spectral_norm needs a circular convolution whose strides "
            f"divide its input; got {geometry}."
        )
    kernel, geometry = operators.ungrouped(ops.convert_to_tensor(kernel), geometry)
    grams, scale = gram_matrices(kernel, geometry)
    largest = projections.largest_eigenvalue(*grams)
    return ops.sqrt(ops.maximum(largest * scale, 0.0))


def gram_matrices(kernel, geometry):
    """``((real, complex), scale)``: the Gram matrices whose largest
    eigenvalue times ``scale`` is ``||A||_2^2``, on the smaller side
    (`plan`)."""
    if plan(geometry, kernel.shape)[0] == "output":
        return LatticePairs(geometry, kernel.shape).grams(kernel), 1.0
    return _input_grams(kernel, geometry), 1.0 / math.prod(geometry.strides)


def check_embeddable(geometry, kernel_shape, where):
    """``ValueError`` unless the orthogonal projection applies: a circular
    convolution whose taps land on distinct pixels of its input grid."""
    if geometry.kind == operators.DENSE:
        return
    if geometry.padding != "circular" or geometry.kind == operators.CONV_TRANSPOSE:
        raise ValueError(
            f"{where}: mode='orthogonal' needs the exact spectrum of a periodic "
            f"2-D convolution, but this layer pads with {geometry.padding!r}. Use "
            "mode='radial', or keras_capacity.CircularConv2D (groups allowed)."
        )
    rows, cols = tap_positions(geometry, kernel_shape)
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
        self.geometry = (
            geometry
            if strides_divide(geometry)
            else operators.OperatorGeometry(
                geometry.kind, geometry.input_size, (1, 1), geometry.dilation, geometry.padding
            )
        )
        rows, cols = tap_positions(geometry, kernel_shape)
        # Flat grid index of every tap, in the kernel's (kh, kw) order.
        self.index = (rows[:, None] * self.size[1] + cols[None, :]).reshape(-1)
        mask = np.zeros(self.size[0] * self.size[1], np.float32)
        mask[self.index] = 1.0
        self.mask = mask.reshape(*self.size, 1, 1)
        # The taps fill the grid: the support is no constraint, and a kernel
        # clipped on the grid is clipped exactly.
        self.covers_grid = bool(mask.all()) and self.geometry.strides == geometry.strides

    def embed(self, kernel):
        return embed(kernel, self.geometry)

    def restrict(self, grid):
        channels_in, channels_out = self.kernel_shape[2:]
        flat = ops.reshape(grid, (-1, channels_in, channels_out))
        return ops.reshape(ops.take(flat, self.index, axis=0), self.kernel_shape)

    def project_support(self, grid):
        return grid * ops.convert_to_tensor(self.mask, grid.dtype)

    def project_spectral_ball(self, grid, lip):
        """The nearest grid kernel whose operator has norm ``<= lip``.

        Stride 1: every ``M(f)``'s singular values are clipped at ``lip``
        (real FFT, half the frequencies). Strides ``s``: the ``S = s_h s_w``
        aliases of each output frequency form one ``(in S) x out`` block
        ``X(g)`` (a re-indexing of the spectrum, so distances are kept), the
        operator's norm is ``max_g ||X(g)||_2 / sqrt(S)``, and each block's
        singular values are clipped at ``lip sqrt(S)``.
        """
        strides = self.geometry.strides
        spatial_last = ops.transpose(grid, (2, 3, 0, 1))  # (in, out, H, W)
        if strides == (1, 1):
            matrices = ops.transpose(backend.rfft2(spatial_last), (2, 3, 0, 1))
            real = self_conjugate(self.size[0], matrices.shape[1], self.size[1])
            clipped = projections.clip_singular_values(matrices, lip, real)
            back = backend.irfft2(ops.transpose(clipped, (2, 3, 0, 1)), self.size)
        else:
            blocks = fold(backend.fft2(spatial_last), strides)
            clipped = projections.clip_singular_values(blocks, lip * np.sqrt(np.prod(strides)))
            back = ops.real(backend.ifft2(unfold(clipped, strides, self.size)))
        return ops.transpose(back, (2, 3, 0, 1))

    def project_kernel(self, kernel, lip):
        """``restrict(project_spectral_ball(embed(kernel)))``.

        Where the output side is the smaller one, without the grid: the
        Gram matrices come from the kernel's autocorrelation and the
        clipped kernel from the lattice pairs (`LatticePairs`), so no
        per-frequency product with the spectrum is formed.
        """
        channels_in, channels_out = self.kernel_shape[2:]
        if channels_out > channels_in * np.prod(self.geometry.strides):
            return self.restrict(self.project_spectral_ball(self.embed(kernel), lip))
        pairs = LatticePairs(self.geometry, self.kernel_shape)
        shrinkage = [
            None if gram is None else projections.singular_value_shrinkage(gram, lip)
            for gram in pairs.grams(kernel)
        ]
        return pairs.multiply(kernel, *shrinkage)
