"""Certificates that a large frequency block lies in the spectral ball,
without its eigendecomposition (SPEC §11).

A matrix ``X`` has ``sigma_max(X) <= c`` exactly when ``c^2 I - X^H X`` is
positive semi-definite. `inside_ball` decides positive definiteness of
``c^2 (1 - SHIFT) I - G`` for a Gram matrix ``G`` by block Gaussian
elimination: with ``M = [[M11, M12], [M21, M22]]``, ``M`` is positive
definite exactly when ``M11`` and its Schur complement ``M22 - M21 M11^-1
M12`` are. Each ``LEAF x LEAF`` pivot block is decided by its own (small)
eigendecomposition, ``M11 = V diag(l) V^H``, and eliminated through ``W =
M21 V diag(l)^(-1/2)``: the complement is ``M22 - W W^H``. That is a
block Cholesky factorization whose pivot blocks are factored through their
eigendecompositions: matrix products and ``LEAF``-sized ``eigh``, which
every backend computes inside a compiled step (TensorFlow's CPU Cholesky
raises on a matrix that is not positive definite instead of returning a
flag, so it cannot decide a batch in the train step).

For a 512 x 512 block this costs about a quarter of its full ``eigh``
(``benchmarks/RESULTS.md``); a block it does not certify is decomposed as
before, so it pays where most large blocks lie inside the ball at a
projection, as the paper's ResNet's deepest layers do: their largest
singular value sits at the bound after a projection, the next one about
1.5% below, and training moves them by more than that gap, so Weyl's
inequality (`keras_capacity.screen`) cannot certify them, but most are
back below the bound by the next projection.

``SHIFT`` keeps the decision on the safe side of float32 rounding (about
``1e-6`` relative in these products): a certified matrix has ``lambda_max(G)
<= c^2`` unless rounding moved it by more than ``SHIFT c^2``.
"""

from keras import ops

from keras_capacity import backend, projections

# Blocks at least this size are certified before their eigendecomposition
# (eigh), and before their eigenvalues alone (eigvalsh) from the larger size:
# below them the decomposition costs about as much as the certificate
# (TensorFlow, 2 cores: 4 x 256 x 256 certificate 4.9 ms, eigh 12.0, eigvalsh
# 5.6; 512 x 512 5.9, 32.0, 12.3).
MIN_SIZE = 256
MIN_SIZE_EIGENVALUES = 512
# The pivot blocks' size.
LEAF = 64
# Relative margin of the test below c^2, above float32 rounding.
SHIFT = 1e-5


def inside_ball(gram, radius):
    """Per matrix of the batch ``gram`` (``(..., n, n)``, Hermitian positive
    semi-definite), whether ``lambda_max(gram) <= radius^2`` is certified
    (``False`` may still lie inside: then decompose it)."""
    n = gram.shape[-1]
    radius = ops.cast(radius, ops.real(gram).dtype)
    level = ops.cast(radius * radius * (1.0 - SHIFT), gram.dtype)
    matrix = level * ops.cast(ops.eye(n), gram.dtype) - gram
    certified = None
    while True:
        size = min(LEAF, matrix.shape[-1])
        values, vectors = backend.eigh(matrix[..., :size, :size])
        positive = ops.all(values > 0, axis=-1)
        certified = positive if certified is None else ops.logical_and(certified, positive)
        if size == matrix.shape[-1]:
            return certified
        # A pivot that is not positive leaves the answer False whatever follows.
        inverse_root = ops.where(values > 0, ops.rsqrt(ops.maximum(values, 1e-30)), 0.0)
        whitening = vectors * ops.expand_dims(ops.cast(inverse_root, vectors.dtype), -2)
        eliminated = backend.matmul(matrix[..., size:, :size], whitening)
        matrix = matrix[..., size:, size:] - backend.matmul(
            eliminated, projections.adjoint(eliminated)
        )
