"""CircularConv2D: numpy wrap padding followed by a valid convolution."""

import keras
import numpy as np
import pytest

import keras_capacity as kc


def numpy_circular_conv(x, kernel, stride, dilation=1):
    kh, kw = kernel.shape[:2]
    pads = []
    for k in (kh, kw):
        span = dilation * (k - 1) + 1
        pads.append(((span - 1) // 2, span - 1 - (span - 1) // 2))
    padded = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), mode="wrap")
    out_h = (padded.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    out_w = (padded.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(kh):
                for b in range(kw):
                    patch = padded[:, i * stride + a * dilation, j * stride + b * dilation, :]
                    out[:, i, j, :] += patch @ kernel[a, b]
    return out


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4])
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 5)])
def test_circular_conv_equals_wrap_pad_then_valid_conv(kernel_size, strides, size):
    layer = kc.CircularConv2D(3, kernel_size, strides=strides, use_bias=False)
    x = np.random.default_rng(0).standard_normal((2, *size, 2)).astype(np.float32)
    y = layer(x).numpy()
    expected = numpy_circular_conv(x, layer.kernel.numpy(), strides)
    assert y.shape == expected.shape == (2, -(-size[0] // strides), -(-size[1] // strides), 3)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_circular_conv_with_dilation():
    layer = kc.CircularConv2D(3, 3, dilation_rate=2, use_bias=False)
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(
        layer(x).numpy(), numpy_circular_conv(x, layer.kernel.numpy(), 1, 2), atol=1e-5
    )


def test_circular_conv_symbolic_shape_and_config_round_trip():
    layer = kc.CircularConv2D(4, 3, strides=2, kernel_constraint=kc.LipDist(1.0, 5.0))
    out = layer(keras.Input((9, 9, 3)))
    assert tuple(out.shape) == (None, 5, 5, 4)
    clone = kc.CircularConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, kc.CircularConv2D)
    assert restored.kernel_constraint.lip == 1.0


def test_circular_conv_refuses_other_padding():
    with pytest.raises(ValueError, match="periodically"):
        kc.CircularConv2D(4, 3, padding="same")


def reference_conv(x, weight, stride=1):
    """The PyTorch reference's conv2d_cyclic_pad in numpy, on NCHW inputs:
    k // 2 wrapped rows before and k // 2 after, one fewer after for an even
    k; then a valid cross-correlation with weight (out, in, kh, kw)."""
    kh, kw = weight.shape[2:]
    before_h, before_w = kh // 2, kw // 2
    after_h, after_w = kh // 2 - (kh % 2 == 0), kw // 2 - (kw % 2 == 0)
    rows = np.arange(-before_h, x.shape[2] + after_h) % x.shape[2]
    cols = np.arange(-before_w, x.shape[3] + after_w) % x.shape[3]
    padded = x[:, :, rows][:, :, :, cols]
    out_h = (padded.shape[2] - kh) // stride + 1
    out_w = (padded.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], weight.shape[0], out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("ncab,ocab->no", patch, weight)
    return out


@pytest.mark.parametrize("kernel_size,size,stride", [(2, 2, 1), (2, 2, 2), (3, 5, 1), (1, 3, 1)])
def test_reference_kernels_convert_to_the_same_map(kernel_size, size, stride):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 4, kernel_size, kernel_size))  # PyTorch layout
    x = rng.standard_normal((3, 4, size, size))
    expected = reference_conv(x, weight, stride)
    layer = kc.CircularConv2D(5, kernel_size, strides=stride, use_bias=False)
    layer.build((None, size, size, 4))
    layer.kernel.assign(kc.layers.kernel_from_reference(weight).astype(np.float32))
    ours = np.transpose(
        np.asarray(layer(np.transpose(x, (0, 2, 3, 1)).astype(np.float32))), (0, 3, 1, 2)
    )
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    if kernel_size == 2 and stride == 1:
        # Loaded without the roll, the outputs move by about their own size.
        layer.kernel.assign(np.transpose(weight, (2, 3, 1, 0)).astype(np.float32))
        unconverted = np.transpose(
            np.asarray(layer(np.transpose(x, (0, 2, 3, 1)).astype(np.float32))), (0, 3, 1, 2)
        )
        assert np.linalg.norm(unconverted - expected) > 0.5 * np.linalg.norm(expected)
