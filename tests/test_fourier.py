"""The in-graph exact norm of circular convolutions (keras_capacity.fourier)
against the dense matrix of the layer's own map."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import operator_matrix

import keras_capacity as kc
from keras_capacity import fourier, operators

# (input size, kernel, in, out, strides, dilation): both Gram sides, odd and
# even sizes, strides (2, 3), a kernel that wraps (5 taps on 3 pixels), 1x1.
GEOMETRIES = [
    ((6, 7), 3, 3, 5, (1, 1), (1, 1)),  # input side (5 > 3)
    ((7, 9), 3, 5, 3, (1, 1), (1, 1)),  # output side, odd sizes
    ((8, 8), 3, 4, 3, (2, 2), (1, 1)),  # output side, strided
    ((6, 8), 2, 2, 9, (2, 2), (1, 1)),  # input side, strided (9 > 2 * 4)
    ((8, 6), 3, 2, 5, (2, 3), (1, 1)),  # output side, strides (2, 3)
    ((8, 7), 3, 3, 2, (1, 1), (2, 2)),  # dilated
    ((3, 3), 5, 3, 4, (1, 1), (1, 1)),  # taps wrap onto the same pixels
    ((1, 1), 1, 6, 3, (1, 1), (1, 1)),  # a 1x1 map (a classifier head)
]


@pytest.mark.parametrize("size,k,channels_in,channels_out,strides,dilation", GEOMETRIES)
def test_exact_norm_equals_dense_operator_norm(
    size, k, channels_in, channels_out, strides, dilation
):
    layer = kc.CircularConv2D(
        channels_out, k, strides=strides, dilation_rate=dilation, use_bias=False
    )
    keras.Sequential([keras.Input((*size, channels_in)), layer])
    geometry = operators.OperatorGeometry("conv2d", size, strides, dilation, "circular")
    expected = np.linalg.norm(operator_matrix(layer, (*size, channels_in)), 2)
    # The oracle goes through the float32 layer: 1e-6 is its own precision.
    kernel64 = tf.constant(layer.kernel.numpy().astype(np.float64))
    np.testing.assert_allclose(
        float(fourier.spectral_norm(kernel64, geometry)), expected, rtol=1e-6
    )
    compiled = tf.function(lambda kernel: fourier.spectral_norm(kernel, geometry))
    np.testing.assert_allclose(float(compiled(layer.kernel)), expected, rtol=1e-5)


def test_exact_norm_refuses_strides_that_do_not_divide():
    geometry = operators.OperatorGeometry("conv2d", (7, 8), (2, 2), padding="circular")
    assert not fourier.has_exact_norm(geometry, (3, 3, 2, 2))
    with pytest.raises(ValueError, match="divide"):
        fourier.spectral_norm(tf.ones((3, 3, 2, 2)), geometry)


def test_exact_norm_only_within_its_cost_limit():
    geometry = operators.OperatorGeometry("conv2d", (32, 32), padding="circular")
    assert fourier.has_exact_norm(geometry, (3, 3, 128, 128))
    assert not fourier.has_exact_norm(geometry, (3, 3, 512, 512))
    same = operators.OperatorGeometry("conv2d", (32, 32), padding="same")
    assert not fourier.has_exact_norm(same, (3, 3, 8, 8))
