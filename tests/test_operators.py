"""Operators and their adjoints, circular padding, the block eigensolver."""

import numpy as np
import pytest
import tensorflow as tf

from keras_capacity import operators

GEOMETRIES = [
    operators.OperatorGeometry("conv2d", (7, 6), (1, 1), (1, 1), "same"),
    operators.OperatorGeometry("conv2d", (7, 6), (2, 2), (1, 1), "valid"),
    operators.OperatorGeometry("conv2d", (8, 8), (1, 1), (2, 2), "same"),
    operators.OperatorGeometry("conv2d", (7, 8), (2, 2), (1, 1), "circular"),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_adjoint_satisfies_inner_product_identity(geometry):
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.standard_normal((3, 3, 2, 4)))
    x = tf.constant(rng.standard_normal(geometry.input_shape(kernel.shape)))
    ax = operators.apply_operator(kernel, x, geometry)
    y = tf.constant(rng.standard_normal(ax.shape))
    aty = operators.apply_adjoint(kernel, y, geometry)
    np.testing.assert_allclose(
        float(tf.reduce_sum(ax * y)), float(tf.reduce_sum(x * aty)), rtol=1e-10
    )


@pytest.mark.parametrize("size,kernel_size,dilation", [(5, 3, 1), (6, 2, 1), (4, 5, 1), (7, 3, 2)])
def test_circular_pad_matches_numpy_wrap(size, kernel_size, dilation):
    x = np.arange(size * size, dtype=np.float32).reshape(1, size, size, 1)
    span = dilation * (kernel_size - 1) + 1
    before = (span - 1) // 2
    expected = np.pad(
        x, ((0, 0), (before, span - 1 - before), (before, span - 1 - before), (0, 0)), mode="wrap"
    )
    padded = operators.circular_pad(x, (kernel_size,) * 2, (dilation,) * 2)
    np.testing.assert_array_equal(padded.numpy(), expected)


def test_subspace_iteration_converges_to_svd():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((30, 20))
    geometry = operators.OperatorGeometry("dense")
    start = rng.standard_normal((4, 30))
    sigma, block = operators.subspace_iteration(
        tf.constant(kernel), tf.constant(start), geometry, max_steps=500, rtol=1e-14
    )
    top = np.linalg.svd(kernel, compute_uv=False)[0]
    np.testing.assert_allclose(float(sigma), top, rtol=1e-10)
    gram = block.numpy() @ block.numpy().T
    np.testing.assert_allclose(gram, np.eye(4), atol=1e-10)


def test_geometry_rejects_bad_values():
    with pytest.raises(ValueError, match="padding"):
        operators.OperatorGeometry("conv2d", (4, 4), padding="reflect")
    with pytest.raises(ValueError, match="input size"):
        operators.OperatorGeometry("conv2d", (4,))
    with pytest.raises(ValueError, match="kind"):
        operators.OperatorGeometry("conv3d")
