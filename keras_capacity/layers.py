"""Layers of the paper's networks."""

import keras

from keras_capacity import operators


@keras.saving.register_keras_serializable(package="keras_capacity")
class CircularConv2D(keras.layers.Conv2D):
    """A ``Conv2D`` whose input is padded periodically (the reference's convs).

    The output equals numpy's ``np.pad(x, ..., mode="wrap")`` followed by a
    valid convolution, where a kernel spanning ``k_eff = d (k - 1) + 1``
    pixels (``d`` the dilation) gets ``(k_eff - 1) // 2`` wrapped pixels
    before and ``k_eff - 1 - (k_eff - 1) // 2`` after along each spatial
    axis. With stride ``s`` the output has ``ceil(H / s) x ceil(W / s)``
    pixels; an odd kernel is centred, as PyTorch's ``padding_mode="circular"``
    with ``padding=k // 2``.

    With stride 1 the layer's singular values are exactly those of the
    per-frequency matrices of its kernel's 2-D DFT (Sedghi et al. 2019),
    which :func:`keras_capacity.lipschitz` uses.

    >>> conv = CircularConv2D(64, 3, use_bias=False,
    ...                       kernel_constraint=LipDist(1.0, 90))

    Args: as ``keras.layers.Conv2D``; ``padding`` can only be ``"circular"``.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="circular",
                 **kwargs):
        if padding != "circular":
            raise ValueError(
                "CircularConv2D always pads periodically: leave out "
                f"`padding` (got padding={padding!r}), or use "
                "keras.layers.Conv2D for zero padding."
            )
        super().__init__(filters, kernel_size, strides=strides,
                         padding="valid", **kwargs)

    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def call(self, inputs):
        padded = operators.circular_pad(
            inputs, self.kernel_size, self.dilation_rate, self._spatial_axes()
        )
        return super().call(padded)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis, stride in zip(self._spatial_axes(), self.strides):
            if shape[axis] is not None:
                shape[axis] = -(-shape[axis] // stride)
        channel_axis = 3 if self.data_format == "channels_last" else 1
        shape[channel_axis] = self.filters
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config["padding"] = "circular"
        return config
