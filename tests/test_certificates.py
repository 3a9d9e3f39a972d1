"""keras_capacity.certificates: the certificate that a block lies in the
spectral ball, against matrices whose spectra are set exactly (random
unitary eigenvectors, float64), at the bound and on either side of it, with
the excess hidden in the last pivot block or spread over a flat top."""

import numpy as np
import pytest
import tensorflow as tf

from keras_capacity import certificates


def with_spectrum(values, rng, complex_=False, vectors=None):
    """``V diag(values) V^H`` for a random unitary ``V`` (or ``vectors``)."""
    n = len(values)
    if vectors is None:
        a = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if complex_ else 0)
        vectors, _ = np.linalg.qr(a)
    return (vectors * values) @ vectors.conj().T


@pytest.mark.parametrize("n", [256, 300, 512])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
def test_certified_exactly_below_the_bound(n, dtype):
    """Top eigenvalue ``r^2 (1 + e)``: certified for ``e`` of -1e-3 and
    -2e-5 (inside by more than the shift), never for 0, 1e-6 or 1e-3,
    whether the rest lies 1.5% below the top (the ResNet's deep layers) or
    within 1e-4 of it (a flat top)."""
    rng = np.random.default_rng(n)
    radius = 1.7
    for spread in (0.985, 0.9999):
        for excess, expected in (
            (-1e-3, True),
            (-2e-5, True),
            (0.0, False),
            (1e-6, False),
            (1e-3, False),
        ):
            top = radius**2 * (1 + excess)
            values = np.concatenate([[top], rng.uniform(0, spread * top, n - 1)])
            gram = with_spectrum(values, rng, complex_=dtype.startswith("complex"))
            ours = certificates.inside_ball(tf.constant(gram.astype(dtype))[None], radius)
            assert bool(ours.numpy()[0]) is expected, (spread, excess)


def test_an_excess_in_the_last_pivot_block_is_found():
    """The top direction is the last coordinate: only the last pivot block
    (after every elimination) sees it. A batch: only the matrix inside
    the ball is certified."""
    n, radius = 300, 1.0
    rng = np.random.default_rng(0)
    rest, _ = np.linalg.qr(rng.standard_normal((n - 1, n - 1)))
    vectors = np.zeros((n, n))
    vectors[:-1, 1:] = rest
    vectors[-1, 0] = 1.0
    grams = [
        with_spectrum(np.concatenate([[top], rng.uniform(0, 0.9, n - 1)]), rng, vectors=vectors)
        for top in (1.0 + 1e-4, 1.0 - 1e-3, 1.0 + 1e-2)
    ]
    ours = certificates.inside_ball(tf.constant(np.stack(grams).astype("float32")), radius)
    np.testing.assert_array_equal(ours.numpy(), [False, True, False])


def test_in_a_compiled_function():
    rng = np.random.default_rng(1)
    gram = with_spectrum(rng.uniform(0, 0.99, 260), rng).astype("float32")
    certify = tf.function(lambda g: certificates.inside_ball(g, 1.0))
    assert bool(certify(tf.constant(gram[None])).numpy()[0])
