"""Exact or converged spectral norms in float64: the numbers we report.

Training projects with the fast, warm-started subspace iteration of
:mod:`keras_capacity.operators`. What the library *reports* as a layer's
Lipschitz constant is computed here, outside the training graph, in float64:

* Dense: the largest singular value from an SVD (exact).
* Circular convolution, stride 1: Sedghi, Gupta & Long (ICLR 2019). The
  operator is diagonalized by the 2-D DFT over the ``H x W`` grid; its
  singular values are those of the ``in x out`` matrices
  ``M(f) = sum_{a,b} K[a, b] exp(-2 pi i (f_h a d_h / H + f_w b d_w / W))``
  at every frequency ``f`` (exact). A real kernel makes ``M(-f)`` the complex
  conjugate of ``M(f)``, so only ``W // 2 + 1`` frequency columns are
  decomposed.
* Everything else (zero padding, strides, dilation): Lanczos iteration
  (ARPACK) on ``A^T A`` in float64, converged far below the relative
  tolerance of 1e-5 that the project promises.
"""

import functools

import numpy as np
import scipy.sparse.linalg
import tensorflow as tf

from keras_capacity import operators

# Convergence tolerance handed to ARPACK for the eigenvalue of A^T A.
LANCZOS_TOL = 1e-12
# Below this many input dimensions the Gram matrix A^T A is formed densely.
DENSE_GRAM_LIMIT = 256


def _circular_partial_dft(kernel, input_size, dilation):
    """Transforms the kernel along the width: ``(kh, W//2+1, in, out)``."""
    _, kw = kernel.shape[:2]
    width = input_size[1]
    freqs = np.arange(width // 2 + 1)
    taps = np.arange(kw) * dilation[1]
    phase = np.exp(-2j * np.pi * np.outer(freqs, taps) / width)
    return np.einsum("fb,abio->afio", phase, kernel)


def _height_phases(kernel, input_size, dilation):
    height = input_size[0]
    taps = np.arange(kernel.shape[0]) * dilation[0]
    return np.exp(-2j * np.pi * np.outer(np.arange(height), taps) / height)


def circular_conv_spectral_norm(kernel, input_size, dilation=(1, 1)):
    """Exact ``||A||_2`` of a stride-1 circular convolution on ``H x W``.

    Works one frequency row at a time, so memory stays at one row of
    ``in x out`` matrices whatever the input size.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    partial = _circular_partial_dft(kernel, input_size, dilation)
    phases = _height_phases(kernel, input_size, dilation)
    transpose = kernel.shape[2] > kernel.shape[3]
    largest = 0.0
    for row_phase in phases:
        m = np.einsum("a,afio->fio", row_phase, partial)
        if transpose:
            m = np.swapaxes(m, 1, 2)
        gram = np.swapaxes(m, 1, 2).conj() @ m  # (W//2+1, small, small)
        largest = max(largest, float(np.linalg.eigvalsh(gram)[:, -1].max()))
    return float(np.sqrt(max(largest, 0.0)))


@functools.lru_cache(maxsize=32)
def _compiled_gram(geometry, kernel_shape):
    """``(kernel, vectors) -> A^T A vectors``, traced once per geometry and
    kernel shape (a model's layers share a few)."""
    shape = geometry.input_shape(kernel_shape)
    size = int(np.prod(shape))

    @tf.function(reduce_retracing=True)
    def gram(kernel, vectors):  # (batch, size)
        x = tf.reshape(vectors, (-1, *shape[1:]))
        ax = operators.apply_operator(kernel, x, geometry)
        return tf.reshape(operators.apply_adjoint(kernel, ax, geometry), (-1, size))

    return gram, size


def _gram_operator(kernel, geometry):
    """``v -> A^T A v`` on flat float64 vectors, and the input dimension."""
    kernel64 = tf.constant(np.asarray(kernel, dtype=np.float64))
    gram, size = _compiled_gram(geometry, tuple(kernel64.shape))
    return (lambda vectors: gram(kernel64, vectors)), size


def top_singular(kernel, geometry, k=1, v0=None):
    """Converged top singular values of ``A`` and right singular vectors.

    Args:
        kernel: the kernel (any array-like).
        geometry: an :class:`operators.OperatorGeometry`.
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
        matrix = gram(tf.eye(size, dtype=tf.float64)).numpy()
        eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    else:
        if v0 is None or not np.any(v0):
            v0 = np.random.default_rng(0).standard_normal(size)
        linear_operator = scipy.sparse.linalg.LinearOperator(
            (size, size),
            matvec=lambda v: gram(v.reshape(1, -1)).numpy().ravel(),
            matmat=lambda m: gram(m.T).numpy().T,
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


def spectral_norm(kernel, geometry):
    """The layer's Lipschitz constant ``||A||_2``, exact or converged."""
    if geometry.kind == operators.DENSE:
        return float(np.linalg.norm(np.asarray(kernel, np.float64), 2))
    if geometry.padding == "circular" and geometry.strides == (1, 1):
        return circular_conv_spectral_norm(
            kernel, geometry.input_size, geometry.dilation
        )
    return top_singular(kernel, geometry)[0]
