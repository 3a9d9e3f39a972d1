"""Exact or converged spectral norms in float64: the numbers we report.

Training projects with the in-graph estimators of
`keras_capacity.lipschitz_estimators`. What the library *reports* as a
layer's Lipschitz constant is computed here, outside the training graph, in
float64 (numpy, or Lanczos over the compiled operator):

* Dense: the largest singular value from an SVD (exact).
* Circular convolution: Sedghi, Gupta & Long (ICLR 2019). The operator is
  diagonalized by the 2-D DFT over the ``H x W`` grid; its singular values
  are those of the ``in x out`` matrices
  ``M(f) = sum_{a,b} K[a, b] exp(-2 pi i (f_h a d_h / H + f_w b d_w / W))``
  at every frequency ``f`` (exact). With strides dividing ``H x W``, the
  frequencies that alias onto one output frequency form one block (see
  `circular_conv_spectral_norm`).
* Everything else (zero padding, strides that do not divide, 1-D and 3-D
  and transposed convolutions): Lanczos iteration (ARPACK) on ``A^T A`` in
  float64, ``A`` applied as the layer applies it and ``A^T`` as its
  gradient, converged far below the relative tolerance of 1e-5 that the
  project promises; a small ``A^T A`` is formed densely and decomposed.
* ``1 x 1`` convolutions: the ``in x out`` matrix applied at every pixel
  the strides keep, so the norm is that matrix's (exact, SVD).
* Grouped convolutions (depthwise ones too: one group per input channel)
  are block diagonal: group ``g`` maps its ``in / groups`` input channels
  to its ``out / groups`` output channels, so ``||A||_2`` is the largest of
  the groups' norms, each found as above on its own small problem
  (`grouped_spectral_norm`).
"""

import dataclasses
import functools

import numpy as np
import scipy.sparse.linalg
from keras import ops

from keras_capacity import backend, fourier, operators

# Convergence tolerance handed to ARPACK for the eigenvalue of A^T A.
LANCZOS_TOL = 1e-12
# Below this many input dimensions the Gram matrix A^T A is formed densely.
DENSE_GRAM_LIMIT = 256
# At most this many Gram entries are formed at once for the groups of a
# grouped convolution (2^25 float64: 256 MiB).
GROUP_GRAM_ENTRIES = 2**25
# Steps of per-group subspace iteration that start a grouped operator's
# tracked directions (grouped_top_singular), at most.
GROUPED_STEPS = 100


def _phases(offsets, size, frequencies):
    """``exp(-2 pi i f x / size)`` for every frequency ``f`` and tap offset ``x``."""
    return np.exp(-2j * np.pi * np.outer(frequencies, offsets) / size)


def circular_conv_spectral_norm(kernel, geometry):
    """Exact ``||A||_2`` of a circular convolution on ``H x W``.

    Stride 1: the largest singular value over the per-frequency ``in x out``
    matrices ``M(f)`` (Sedghi et al. 2019); a real kernel makes ``M(-f)``
    the conjugate of ``M(f)``, so only ``W // 2 + 1`` columns are needed.

    Stride ``s`` (with ``s`` dividing the input size): subsampling folds the
    ``s_h s_w`` input frequencies ``g + (a H/s_h, b W/s_w)`` onto output
    frequency ``g``, so the operator is block diagonal with blocks
    ``[M(f_1)^T ... M(f_S)^T] / sqrt(S)`` of size ``out x (in S)``. The taps
    sit at `keras_capacity.fourier.tap_positions`. Pairs ``g, -g`` are
    conjugate, so half of the output rows are decomposed. Works one output
    row at a time, in numpy (float64 on every Keras backend).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    if not fourier.strides_divide(geometry):
        raise ValueError(
            f"strides {geometry.strides} do not divide the input size {geometry.input_size}."
        )
    rows_at, cols_at = fourier.tap_positions(geometry, kernel.shape)
    out_h, out_w = height // s_h, width // s_w
    columns = np.arange(width // 2 + 1) if s_w == 1 else np.arange(width)
    partial = np.einsum("fb,abio->afio", _phases(cols_at, width, columns), kernel)
    # Conjugate pairs: half the columns over all rows, or (strided width)
    # half the rows over all columns.
    row_count = out_h if s_w == 1 else out_h // 2 + 1
    largest = 0.0
    for row in range(row_count):
        rows = row + np.arange(s_h) * out_h
        m = np.einsum("ra,afio->rfio", _phases(rows_at, height, rows), partial)
        if s_w > 1:  # (s_h, s_w * out_w, ...) -> (out_w, in * S, out): the folded blocks
            m = m.reshape(s_h, s_w, out_w, *m.shape[2:])
            m = np.moveaxis(m, 2, 0).reshape(out_w, s_h * s_w * kernel.shape[2], kernel.shape[3])
        else:
            m = np.moveaxis(m, 1, 0).reshape(len(columns), s_h * kernel.shape[2], kernel.shape[3])
        if m.shape[2] > m.shape[1]:  # the Gram matrix on the smaller side
            m = np.swapaxes(m, 1, 2)
        gram = np.swapaxes(m, 1, 2).conj() @ m
        largest = max(largest, float(np.linalg.eigvalsh(gram)[:, -1].max()))
    return float(np.sqrt(max(largest, 0.0) / (s_h * s_w)))


@functools.lru_cache(maxsize=32)
def _compiled_gram(geometry, kernel_shape):
    """``(kernel, vectors) -> A^T A vectors``, compiled once per geometry and
    kernel shape (a model's layers share a few)."""
    shape = geometry.input_shape(kernel_shape)
    size = int(np.prod(shape))

    def gram(kernel, vectors):  # (batch, size)
        x = ops.reshape(vectors, (-1, *shape[1:]))
        ax = operators.apply_operator(kernel, x, geometry)
        return ops.reshape(operators.apply_adjoint(kernel, ax, geometry), (-1, size))

    return backend.compile(gram), size


def _gram_operator(kernel, geometry):
    """``v -> A^T A v`` on flat float64 vectors (numpy), and the input
    dimension; in float64 on every backend (`keras_capacity.backend.float64`)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    gram, size = _compiled_gram(geometry, kernel.shape)

    def apply(vectors):
        with backend.float64():
            result = gram(
                ops.convert_to_tensor(kernel, "float64"), ops.convert_to_tensor(vectors, "float64")
            )
            return ops.convert_to_numpy(result)

    return apply, size


def _group_slices(x, groups):
    """``(k, ..., channels)`` -> ``(groups, k, n)``, each group's channels
    (as `keras_capacity.operators.subspace_iteration` groups them)."""
    k, channels = x.shape[0], x.shape[-1]
    x = x.reshape(k, -1, groups, channels // groups)
    return np.moveaxis(x, 2, 0).reshape(groups, k, -1)


def _ungroup_slices(x, shape):
    """The inverse of `_group_slices`, to ``shape`` (``(k, ...)``)."""
    groups, k = x.shape[:2]
    x = x.reshape(groups, k, -1, shape[-1] // groups)
    return np.moveaxis(x, 0, 2).reshape(shape)


def _orthonormalized(rows):
    """``(groups, k, n)`` rows orthonormalized per group (SVQB in float64,
    dependent directions dropped as zero rows)."""
    gram = rows @ np.swapaxes(rows, 1, 2)
    norms = np.einsum("gii->gi", gram)
    scale = np.where(norms > 1e-300, 1.0 / np.sqrt(np.maximum(norms, 1e-300)), 0.0)
    values, vectors = np.linalg.eigh(gram * scale[:, :, None] * scale[:, None, :])
    keep = values > 1e-12 * values.max(axis=-1, keepdims=True)
    inverse = np.where(keep, 1.0 / np.sqrt(np.where(keep, values, 1.0)), 0.0)
    return ((np.swapaxes(vectors, 1, 2) * inverse[:, :, None]) * scale[:, None, :]) @ rows


def grouped_top_singular(kernel, geometry, k, start=None, steps=GROUPED_STEPS):
    """``(sigma, vectors)`` for a grouped convolution: its norm, converged by
    Lanczos on the whole (block-diagonal) operator, and every group's top
    ``k`` right singular directions, the rows' slices of that group's
    channels (`keras_capacity.operators.subspace_iteration`), by at
    most ``steps`` LOBPCG steps per group in float64 from ``start``
    (random where absent or zero), until every group's largest Ritz value
    settles to 1e-10: one application of the compiled ``A^T A`` per step
    serves every group, and each group's small Rayleigh-Ritz problem runs
    in numpy. (A group's top singular values cluster, which plain subspace
    iteration follows too slowly to start the train step's tracking.)"""
    kernel = np.asarray(kernel, dtype=np.float64)
    shape = geometry.input_shape(kernel.shape)[1:]
    groups = geometry.groups
    sigma = top_singular(kernel, geometry)[0]
    gram, size = _gram_operator(kernel, geometry)

    def apply(rows):  # A^T A on every group's rows at once
        count = rows.shape[1]
        full = _ungroup_slices(rows, (count, *shape)).reshape(count, size)
        return _group_slices(gram(full).reshape(count, *shape), groups)

    if start is None or not np.any(start):
        start = np.random.default_rng(0).standard_normal((k, *shape))
    x = _orthonormalized(_orthonormalized(_group_slices(np.asarray(start, np.float64), groups)))
    p, previous = np.zeros_like(x), None
    for _ in range(steps):
        w = apply(x)
        top = np.linalg.eigvalsh(x @ np.swapaxes(w, 1, 2))[:, -1]
        if previous is not None and np.abs(top - previous).max() <= 1e-10 * top.max():
            break
        previous = top
        basis = _orthonormalized(_orthonormalized(np.concatenate([x, w, p], axis=1)))
        values, vectors = np.linalg.eigh(basis @ np.swapaxes(apply(basis), 1, 2))
        new_x = np.swapaxes(vectors[..., ::-1][..., :k], 1, 2) @ basis
        p = new_x - (new_x @ np.swapaxes(x, 1, 2)) @ x
        x = new_x
    return sigma, _ungroup_slices(x, (k, *shape))


def top_singular(kernel, geometry, k=1, v0=None):
    """Converged top singular values of ``A`` and right singular vectors.

    Args:
        kernel: the kernel (any array-like).
        geometry: an `operators.OperatorGeometry`.
        k: how many singular pairs (at most the input dimension).
        v0: an optional start vector for Lanczos; a fixed one otherwise.

    Returns:
        ``(sigma, vectors)``: ``||A||_2`` and the top ``k`` right singular
        vectors, shaped ``(k, *geometry.input_shape(kernel.shape)[1:])``,
        largest first.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    shape = geometry.input_shape(kernel.shape)[1:]
    if geometry.kind == operators.DENSE:
        _, s, vt = np.linalg.svd(kernel.T, full_matrices=False)
        vectors = np.zeros((k, kernel.shape[0]))
        vectors[: min(k, len(vt))] = vt[:k]
        return float(s[0]), vectors.reshape(k, *shape)
    gram, size = _gram_operator(kernel, geometry)
    if size <= max(DENSE_GRAM_LIMIT, k + 1):
        matrix = gram(np.eye(size))
        eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    else:
        if v0 is None or not np.any(v0):
            v0 = np.random.default_rng(0).standard_normal(size)
        linear_operator = scipy.sparse.linalg.LinearOperator(
            (size, size),
            matvec=lambda v: gram(v.reshape(1, -1)).ravel(),
            matmat=lambda m: gram(m.T).T,
            dtype=np.float64,
        )
        eigenvalues, eigenvectors = scipy.sparse.linalg.eigsh(
            linear_operator,
            k=k,
            which="LA",
            v0=np.asarray(v0, dtype=np.float64).ravel()[:size],
            tol=LANCZOS_TOL,
        )
    order = np.argsort(eigenvalues)[::-1][:k]
    sigma = float(np.sqrt(max(eigenvalues[order[0]], 0.0)))
    return sigma, eigenvectors[:, order].T.reshape(k, *shape)


def _group_kernel(kernel, geometry, first, count):
    """The kernel and geometry of ``count`` consecutive groups from
    ``first`` of a grouped convolution (one grouped convolution again)."""
    per_group = kernel.shape[-1] // geometry.groups
    block = kernel[..., first * per_group : (first + count) * per_group]
    return block, dataclasses.replace(geometry, groups=count)


def _group_grams(kernel, geometry):
    """``(groups, n, n)``: every group's ``A_g^T A_g`` (``n`` its input
    dimension), from one pass of the grouped operator over ``n`` basis
    inputs that carry basis vector ``j`` in every group at once."""
    shape = geometry.input_shape(kernel.shape)[1:-1]
    channels = kernel.shape[-2]
    n = int(np.prod(shape)) * channels
    basis = np.eye(n).reshape(n, *shape, channels)
    gram, _ = _gram_operator(kernel, geometry)
    images = gram(np.tile(basis, geometry.groups).reshape(n, -1))
    images = images.reshape(n, -1, geometry.groups, channels)
    return np.moveaxis(images, 2, 0).reshape(geometry.groups, n, n)


def grouped_spectral_norm(kernel, geometry):
    """``||A||_2`` of a grouped convolution: the largest of its groups'.

    The operator is block diagonal over the groups, so each group is its
    own problem on ``in / groups`` input channels: exact by the FFT where
    the padding is circular, by dense Gram matrices where a group's input
    dimension is at most `DENSE_GRAM_LIMIT` (all groups' in one pass,
    a few hundred at a time), by Lanczos otherwise."""
    groups = geometry.groups
    single = dataclasses.replace(geometry, groups=1)
    n = int(np.prod(single.input_shape(kernel.shape)[1:]))
    if n > DENSE_GRAM_LIMIT or (fourier.is_circular(single) and fourier.strides_divide(single)):
        return max(
            spectral_norm(_group_kernel(kernel, geometry, g, 1)[0], single) for g in range(groups)
        )
    largest, step = 0.0, max(1, GROUP_GRAM_ENTRIES // (n * n))
    for first in range(0, groups, step):
        block, chunk = _group_kernel(kernel, geometry, first, min(step, groups - first))
        grams = _group_grams(block, chunk)
        grams = (grams + np.swapaxes(grams, 1, 2)) / 2
        largest = max(largest, float(np.linalg.eigvalsh(grams)[:, -1].max()))
    return float(np.sqrt(max(largest, 0.0)))


def spectral_norm(kernel, geometry):
    """The layer's Lipschitz constant ``||A||_2``, exact or converged."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if geometry.kind == operators.DENSE:
        return float(np.linalg.norm(kernel, 2))
    if geometry.groups > 1:
        return grouped_spectral_norm(kernel, geometry)
    if geometry.kind != operators.CONV_TRANSPOSE and kernel.shape[:-2] == (1,) * geometry.rank:
        # 1 x 1: the in x out matrix at every pixel kept (at least one).
        return float(np.linalg.norm(kernel.reshape(kernel.shape[-2:]), 2))
    if fourier.is_circular(geometry) and fourier.strides_divide(geometry):
        return circular_conv_spectral_norm(kernel, geometry)
    return top_singular(kernel, geometry)[0]
