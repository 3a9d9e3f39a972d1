"""lipschitz(layer) against the dense matrix of the layer's own map, to the
precision the README promises: exact (FFT, SVD) or Lanczos-converged, "far
below 1e-5 relative"."""

import keras
import numpy as np
import pytest
from conftest import operator_matrix

import keras_capacity as kc
from keras_capacity import exact_norms, operators

# An order of magnitude below the README's 1e-5: what "far below" must at
# least mean. The oracle is a float64 SVD of the matrix the float32 layer
# gives on basis inputs (each entry one kernel tap, computed exactly).
FAR_BELOW_PROMISE = 1e-6
# Up to 256 input dimensions the library forms A^T A densely; above, Lanczos.
DENSE_GRAM = (8, 8, 3)
LANCZOS = (12, 12, 3)

CONVS = [
    ("same", dict(padding="same")),
    ("valid", dict(padding="valid")),
    ("same_stride2", dict(padding="same", strides=2)),
    ("valid_stride2", dict(padding="valid", strides=2)),
    ("same_dilation2", dict(padding="same", dilation_rate=2)),
]


def bound(layer, input_shape):
    model = keras.Sequential([keras.Input(input_shape), layer])
    kc.bind(model)
    return layer


@pytest.mark.parametrize("shape", [DENSE_GRAM, LANCZOS], ids=["dense_gram", "lanczos"])
@pytest.mark.parametrize("name,kwargs", CONVS, ids=[c[0] for c in CONVS])
def test_conv2d_lipschitz_equals_dense_operator_norm(name, kwargs, shape):
    layer = bound(keras.layers.Conv2D(4, 3, kernel_constraint=kc.LipDist(), **kwargs), shape)
    expected = np.linalg.norm(operator_matrix(layer, shape), 2)
    np.testing.assert_allclose(kc.lipschitz(layer), expected, rtol=FAR_BELOW_PROMISE)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (13, 11)])
@pytest.mark.parametrize("kernel_size", [3, 2])
@pytest.mark.parametrize("strides", [1, 2])
def test_circular_lipschitz_equals_dense_operator_norm(size, kernel_size, strides):
    layer = bound(
        kc.CircularConv2D(4, kernel_size, strides=strides, kernel_constraint=kc.LipDist()),
        (*size, 3),
    )
    expected = np.linalg.norm(operator_matrix(layer, (*size, 3)), 2)
    # Stride 2 on 7x9 or 13x11 does not divide: the dense Gram matrix
    # (7x9x3 inputs) or Lanczos (13x11x3); otherwise the FFT.
    np.testing.assert_allclose(kc.lipschitz(layer), expected, rtol=FAR_BELOW_PROMISE)


def test_both_paths_are_exercised():
    """The shapes above stay on either side of the dense-Gram limit."""
    assert np.prod(DENSE_GRAM) <= exact_norms.DENSE_GRAM_LIMIT < np.prod(LANCZOS)


def test_circular_stride1_fft_is_exact():
    layer = bound(kc.CircularConv2D(5, 3, kernel_constraint=kc.LipDist()), (6, 7, 3))
    kernel = layer.kernel.numpy()
    fft = exact_norms.circular_conv_spectral_norm(
        kernel, operators.OperatorGeometry("conv2d", (6, 7), padding="circular")
    )
    expected = np.linalg.norm(operator_matrix(layer, (6, 7, 3)), 2)
    np.testing.assert_allclose(fft, expected, rtol=1e-6)
    dilated = exact_norms.circular_conv_spectral_norm(
        kernel, operators.OperatorGeometry("conv2d", (6, 7), dilation=(2, 2), padding="circular")
    )
    geometry = operators.OperatorGeometry("conv2d", (6, 7), dilation=(2, 2), padding="circular")
    np.testing.assert_allclose(dilated, exact_norms.top_singular(kernel, geometry)[0], rtol=1e-8)


def test_dense_lipschitz_is_float64_svd():
    layer = bound(keras.layers.Dense(7, kernel_constraint=kc.LipDist()), (11,))
    expected = np.linalg.svd(layer.kernel.numpy().astype(np.float64), compute_uv=False)[0]
    assert kc.lipschitz(layer) == pytest.approx(expected, rel=1e-12)


def test_large_operator_uses_converged_lanczos():
    layer = bound(
        keras.layers.Conv2D(8, 3, padding="same", kernel_constraint=kc.LipDist()), (12, 12, 4)
    )
    expected = np.linalg.norm(operator_matrix(layer, (12, 12, 4)), 2)
    np.testing.assert_allclose(kc.lipschitz(layer), expected, rtol=FAR_BELOW_PROMISE)


def test_unconstrained_layer_uses_its_build_shape():
    layer = keras.layers.Conv2D(4, 3, padding="same")
    keras.Sequential([keras.Input((6, 6, 2)), layer])
    expected = np.linalg.norm(operator_matrix(layer, (6, 6, 2)), 2)
    np.testing.assert_allclose(kc.lipschitz(layer), expected, rtol=FAR_BELOW_PROMISE)


def test_lipschitz_rejects_other_layers():
    with pytest.raises(ValueError, match="supports Dense and Conv2D"):
        kc.lipschitz(keras.layers.ReLU())


@pytest.mark.parametrize(
    "size,strides,kernel_size",
    [
        ((6, 6), (2, 2), 3),
        ((8, 6), (2, 3), 3),
        ((6, 8), (1, 2), 2),
        ((7, 8), (1, 2), 3),
        ((4, 4), (4, 4), 3),
        ((2, 2), (2, 2), 2),
    ],
)
def test_strided_circular_fft_is_exact(size, strides, kernel_size):
    """The folded-frequency blocks give the strided operator's exact norm."""
    layer = bound(
        kc.CircularConv2D(4, kernel_size, strides=strides, kernel_constraint=kc.LipDist()),
        (*size, 3),
    )
    fft = exact_norms.circular_conv_spectral_norm(
        layer.kernel.numpy(),
        operators.OperatorGeometry("conv2d", size, strides, padding="circular"),
    )
    expected = np.linalg.norm(operator_matrix(layer, (*size, 3)), 2)
    np.testing.assert_allclose(fft, expected, rtol=1e-10)
    np.testing.assert_allclose(kc.lipschitz(layer), expected, rtol=1e-10)
