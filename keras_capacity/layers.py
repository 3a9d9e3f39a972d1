"""Layers of the paper's networks."""

import keras
import numpy as np

from keras_capacity import constraint_values, operators


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
    which `keras_capacity.lipschitz` uses.

    **Even kernels and the reference's checkpoints.** An even kernel has one
    wrapped tap more on one side: here it is *after* the input (a 2x2
    kernel's taps sit at offsets 0 and +1), in the PyTorch reference
    *before* it (offsets -1 and 0). A reference kernel loaded unchanged
    therefore computes another map; `kernel_from_reference` converts
    it (PyTorch's ``(out, in, kh, kw)`` to ``(kh, kw, in, out)``, and each
    even axis rolled by one tap). On the 2x2 maps where the paper's
    networks use 2x2 kernels, -1 and +1 are the same offset and the
    converted kernel gives exactly the reference's outputs.

    >>> conv = CircularConv2D(64, 3, use_bias=False,
    ...                       kernel_constraint=LipDist(1.0, 90))

    Args: as ``keras.layers.Conv2D``; ``padding`` can only be ``"circular"``.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = (1, 1),
        padding: str = "circular",
        **kwargs,
    ):
        if padding != "circular":
            raise ValueError(
                "CircularConv2D always pads periodically: leave out "
                f"`padding` (got padding={padding!r}), or use "
                "keras.layers.Conv2D for zero padding."
            )
        super().__init__(filters, kernel_size, strides=strides, padding="valid", **kwargs)

    def _spatial_axes(self):
        return (1, 2) if self.data_format == "channels_last" else (2, 3)

    def call(self, inputs):
        padded = operators.circular_pad(
            inputs, self.kernel_size, self.dilation_rate, self._spatial_axes()
        )
        return super().call(padded)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for axis, stride in zip(self._spatial_axes(), self.strides, strict=True):
            if shape[axis] is not None:
                shape[axis] = -(-shape[axis] // stride)
        channel_axis = 3 if self.data_format == "channels_last" else 1
        shape[channel_axis] = self.filters
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config["padding"] = "circular"
        return config


def kernel_from_reference(weight) -> np.ndarray:
    """A PyTorch reference convolution kernel ``(out, in, kh, kw)`` as the
    kernel ``(kh, kw, in, out)`` of a `CircularConv2D` computing the
    same map.

    Odd kernels are only transposed. Along an even axis the reference
    wraps its extra tap before the input, ``CircularConv2D`` after it, so
    the taps are rolled by one: tap ``a`` here is the reference's tap
    ``a - 1``. The result equals the reference's map on inputs of size 2
    along that axis (where the paper's networks use 2x2 kernels); on larger
    inputs it equals it up to a one-pixel circular shift of the output.
    """
    kernel = np.transpose(np.asarray(weight), (2, 3, 1, 0))
    for axis in (0, 1):
        if kernel.shape[axis] % 2 == 0:
            kernel = np.roll(kernel, 1, axis=axis)
    return kernel


def simplex_vertices(num_classes, dim):
    """Unit vectors ``(dim, K)`` at the vertices of a regular simplex.

    Centred ``e_i - 1/K`` scaled to unit norm gives pairwise inner products
    ``-1/(K-1)``; they span the ``K-1``-dimensional complement of the
    all-ones vector, whose orthonormal Helmert basis maps them onto the first
    ``K-1`` coordinates of ``R^dim`` (closed form, no prototype files).
    """
    k = num_classes
    centred = (np.eye(k) - 1.0 / k) / np.sqrt(1.0 - 1.0 / k)
    helmert = np.zeros((k - 1, k))
    for row in range(1, k):
        helmert[row - 1, :row] = 1.0
        helmert[row - 1, row] = -row
        helmert[row - 1] /= np.sqrt(row * (row + 1))
    vertices = np.zeros((dim, k))
    vertices[: k - 1] = helmert @ centred
    return vertices


@keras.saving.register_keras_serializable(package="keras_capacity")
class SimplexClassifier(keras.layers.Dense):
    """A fixed, bias-free linear classifier on the vertices of a simplex.

    Its ``K = num_classes`` weight vectors are unit vectors with pairwise
    inner products ``-1/(K-1)``, centred at the origin, embedded in the input
    dimension ``d >= K-1``. Its Lipschitz constant is ``sqrt(K/(K-1))``, or
    ``lip`` when smaller (the weights are scaled down). The weights never
    train, so the distance to initialization is 0.

    >>> head = SimplexClassifier(num_classes=10)

    Args:
        num_classes: ``K >= 2``.
        lip: an optional Lipschitz bound, ``> 0``; ``None`` or ``inf`` for none.
    """

    def __init__(self, num_classes: int, lip: float | None = None, **kwargs):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"SimplexClassifier: num_classes must be an integer >= 2, got {num_classes!r}."
            )
        lip = constraint_values.check_bound(
            lip, constraint_values.LIPSCHITZ, "SimplexClassifier: `lip`"
        )
        for fixed in ("units", "use_bias", "trainable"):
            kwargs.pop(fixed, None)
        super().__init__(num_classes, use_bias=False, trainable=False, **kwargs)
        self.num_classes = num_classes
        self.lip = lip

    @property
    def simplex_lipschitz(self):
        """``sqrt(K/(K-1))``: the spectral norm of the unit-vertex simplex."""
        return float(np.sqrt(self.num_classes / (self.num_classes - 1)))

    @property
    def lipschitz_constant(self):
        """The layer's Lipschitz constant: the simplex's, or ``lip`` if smaller."""
        return min(self.simplex_lipschitz, self.lip)

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None or dim < self.num_classes - 1:
            raise ValueError(
                f"SimplexClassifier {self.name!r}: the input dimension d={dim} "
                f"must be at least num_classes - 1 = {self.num_classes - 1}."
            )
        super().build(input_shape)
        scale = self.lipschitz_constant / self.simplex_lipschitz
        self.kernel.assign(scale * simplex_vertices(self.num_classes, dim))

    def get_config(self):
        config = super().get_config()
        for fixed in (
            "units",
            "use_bias",
            "trainable",
            "kernel_initializer",
            "bias_initializer",
            "kernel_regularizer",
            "bias_regularizer",
            "kernel_constraint",
            "bias_constraint",
            "activity_regularizer",
            "activation",
            "lora_rank",
            "lora_alpha",
            "quantization_config",
        ):
            config.pop(fixed, None)
        config.update(num_classes=self.num_classes, lip=self.lip)
        return config


@keras.saving.register_keras_serializable(package="keras_capacity")
class PoolingShortcut(keras.layers.Layer):
    """The residual network's downsampling shortcut: no weights.

    Concatenates, along channels, two 2x2 max-pools with stride 2: one over
    the windows starting at even pixels, one over the windows shifted by one
    pixel up and left (the first row and column see a single pixel; so does
    the last of an odd size in the first pool). The output has
    ``ceil(H/2) x ceil(W/2)`` pixels, as the models' 3x3/2 ``same`` max-pool
    on the block's other path, and twice the channels; a 1x1 input is
    duplicated. Each pool's windows are disjoint, so each is
    1-Lipschitz in l2 and the concatenation is ``sqrt(2)``-Lipschitz,
    reached by inputs that differ in one pixel.

    Args:
        lip: an optional Lipschitz bound ``> 0`` (``None`` or ``inf``: none);
            when below ``sqrt(2)`` the
            output is scaled by ``lip / sqrt(2)`` (the shortcut entry of the
            models' constraint lists, which the reference ignores).
    """

    def __init__(self, lip: float | None = None, **kwargs):
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        self.lip = constraint_values.check_bound(
            lip, constraint_values.LIPSCHITZ, "PoolingShortcut: `lip`"
        )

    @property
    def lipschitz_constant(self):
        return min(float(np.sqrt(2.0)), self.lip)

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        lowest = keras.ops.cast(
            np.finfo(keras.backend.standardize_dtype(inputs.dtype)).min, inputs.dtype
        )

        def pool(padding):  # pads with the lowest value, which no max keeps
            padded = keras.ops.pad(inputs, [(0, 0), *padding, (0, 0)], constant_values=lowest)
            return keras.ops.max_pool(padded, 2, 2, "valid")

        # Even windows (an odd size's last one padded), and windows shifted
        # by one pixel: ceil(size / 2) of each.
        pooled = [pool([(0, height % 2), (0, width % 2)]), pool([(1, 0), (1, 0)])]
        output = keras.ops.concatenate(pooled, axis=-1)
        scale = self.lipschitz_constant / np.sqrt(2.0)
        return output if scale == 1.0 else output * scale

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, -(-height // 2), -(-width // 2), 2 * channels)

    def build(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(
                "PoolingShortcut expects channels-last images of known size "
                f"(batch, H, W, C); got input shape {tuple(input_shape)}."
            )

    def get_config(self):
        return {**super().get_config(), "lip": self.lip}


@keras.saving.register_keras_serializable(package="keras_capacity")
class PaddedMaxPooling2D(keras.layers.Layer):
    """Max-pooling over the input padded by ``padding`` pixels on every side,
    as PyTorch's ``MaxPool2d(pool_size, strides, padding)``.

    The padding never wins a maximum. A 3x3/2 pool with ``padding=1`` has
    windows starting at pixel -1, where ``MaxPooling2D(3, 2, "same")``
    starts them at 0 on even maps: the two pool different pixels, so
    reproducing the reference's outputs (`keras_capacity.from_reference`)
    needs this one. The output has ``floor((H + 2p - k) / s) + 1`` pixels
    along each axis. Channels-last inputs.

    Args:
        pool_size, strides: ints, as in ``keras.layers.MaxPooling2D``.
        padding: pixels added on every side, ``0 <= padding <= pool_size // 2``.
    """

    def __init__(self, pool_size: int = 3, strides: int = 2, padding: int = 1, **kwargs):
        kwargs.pop("trainable", None)
        super().__init__(trainable=False, **kwargs)
        for name, value, lowest in (("pool_size", pool_size, 1), ("strides", strides, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(
                    f"PaddedMaxPooling2D: `{name}` must be an integer >= 1, got {value!r}."
                )
        if (
            isinstance(padding, bool)
            or not isinstance(padding, int)
            or not 0 <= padding <= pool_size // 2
        ):
            raise ValueError(
                "PaddedMaxPooling2D: `padding` must be an integer in [0, pool_size // 2] "
                f"(a window must hold an input pixel), got {padding!r}."
            )
        self.pool_size, self.strides, self.padding = pool_size, strides, padding
        self.input_size = None

    def build(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:3]:
            raise ValueError(
                "PaddedMaxPooling2D expects channels-last images of known size "
                f"(batch, H, W, C); got input shape {tuple(input_shape)}."
            )
        self.input_size = tuple(input_shape[1:3])

    def _output_size(self, size):
        return (size + 2 * self.padding - self.pool_size) // self.strides + 1

    def call(self, inputs):
        p = self.padding
        if p:
            lowest = keras.ops.cast(
                np.finfo(keras.backend.standardize_dtype(inputs.dtype)).min, inputs.dtype
            )
            inputs = keras.ops.pad(inputs, [(0, 0), (p, p), (p, p), (0, 0)], constant_values=lowest)
        return keras.ops.max_pool(inputs, self.pool_size, self.strides, "valid")

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, self._output_size(height), self._output_size(width), channels)

    @property
    def lipschitz_constant(self):
        """``sqrt`` of the most windows one pixel lies in (exact: an input
        that differs in that pixel alone reaches it); needs the built input
        size."""
        if self.input_size is None:
            raise ValueError(f"PaddedMaxPooling2D {self.name!r} is not built.")
        most = 1
        for size in self.input_size:
            starts = np.arange(self._output_size(size)) * self.strides - self.padding
            pixels = np.arange(size)[:, None]
            covering = (starts <= pixels) & (pixels < starts + self.pool_size)
            most *= int(covering.sum(axis=1).max())
        return float(np.sqrt(most))

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "strides": self.strides,
            "padding": self.padding,
        }


@keras.saving.register_keras_serializable(package="keras_capacity")
class GroupSort(keras.layers.Layer):
    """GroupSort activation (Anil, Lucas & Grosse, ICML 2019).

    Splits the last axis into consecutive groups of ``group_size`` and sorts
    each group in descending order; ``group_size=2`` is MaxMin. Sorting only
    permutes coordinates within each linear region, so the map is
    1-Lipschitz in l2 and preserves the gradient norm. (The reference pairs
    channel ``i`` with ``i + C/2`` instead; that is a fixed channel
    permutation of the same function.)

    Args:
        group_size: ``>= 2``, dividing the number of channels.
    """

    lipschitz_constant = 1.0

    def __init__(self, group_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"GroupSort: group_size must be an integer >= 2, got {group_size!r}.")
        self.group_size = group_size

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.group_size:
            raise ValueError(
                f"GroupSort {self.name!r}: the last axis ({channels}) must be "
                f"a multiple of group_size={self.group_size}."
            )

    def call(self, inputs):
        shape = keras.ops.shape(inputs)
        groups = keras.ops.reshape(
            inputs, (-1, inputs.shape[-1] // self.group_size, self.group_size)
        )
        ordered = -keras.ops.sort(-groups, axis=-1)
        return keras.ops.reshape(ordered, shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}
