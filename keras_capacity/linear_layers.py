"""Every linear layer Keras has, as one kernel and the geometry it acts in.

A layer's Lipschitz constant and its distance to initialization are those
of the linear map ``A: x -> layer(x) - bias`` it computes (SPEC §2). For
each kind of layer that map is a kernel ``K`` and an
`OperatorGeometry` (`linear_map`):

* ``Dense``: ``K`` its ``(in, out)`` kernel.
* ``Conv1D``, ``Conv2D`` (and `CircularConv2D`),
  ``Conv3D``: ``K`` its ``(*k, in / groups, out)`` kernel, with its groups,
  padding (``"causal"`` too), strides and dilation.
* ``DepthwiseConv1D``/``2D``: a grouped convolution with one group per
  input channel, ``K`` the ``(*k, in, m)`` depthwise kernel reshaped to
  ``(*k, 1, in m)``: output channel ``c m + j`` sees input channel ``c``
  only (Keras's order).
* ``SeparableConv1D``/``2D``: depthwise then a ``1 x 1`` pointwise
  convolution, which is exactly *one* convolution with the composed kernel
  ``K[..., c, o] = sum_j D[..., c, j] P[c m + j, o]`` and the depthwise
  step's padding, strides and dilation. Its norm is that of the composed
  map (the product of the two steps' norms only bounds it), computed as
  any zero-padded convolution's: exactly, from the eigenvalues of the dense
  ``A^T A``, up to 256 input dimensions; by Lanczos on ``A^T A`` converged
  to 1e-12 beyond.
* ``Conv1DTranspose``/``2D``/``3D``: ``K`` its ``(*k, out, in)`` kernel,
  applied as the layer applies it (``ops.conv_transpose``, its
  ``output_padding`` included). TensorFlow defines it as ``A^T`` for the
  convolution ``A`` with the same kernel, strides, dilation and padding on
  inputs of the transposed layer's *output* shape (with ``output_padding``
  that shape is the padded one), so the two norms are equal; other
  backends pad explicitly to match. The norm here does not rely on that
  correspondence: Lanczos runs on the layer's own map, its adjoint by
  autodiff, so it is right wherever the shapes do not correspond too.

The (2,1) distance ``||K - K0||_{2,1}`` (`distance21`) is the
Euclidean norm over the *input axis* of ``K``, for every output unit and
kernel position, summed: axis ``-2`` of ``(*k, in / groups, out)``, so
over a group's own input channels for a grouped convolution and over the
one input channel an output unit sees for a depthwise one (there the
norm is ``|K - K0|``, and the distance the entrywise l1 norm); over the
input channels of the composed kernel for a separable one; and, for a
transposed one, axis ``-1`` of Keras's ``(*k, out, in)`` layout.
"""

import keras
import numpy as np
from keras import ops

from keras_capacity import layers as capacity_layers
from keras_capacity import operators

CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
TRANSPOSED = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
LINEAR_LAYERS = (keras.layers.Dense, *CONVOLUTIONS, *DEPTHWISE, *SEPARABLE, *TRANSPOSED)


def is_linear(layer):
    """Whether ``layer`` is one of `LINEAR_LAYERS`."""
    return isinstance(layer, LINEAR_LAYERS)


def _numpy(value):
    return np.asarray(ops.convert_to_numpy(value), np.float64)


def map_kernel(layer):
    """The kernel ``K`` of ``layer``'s linear map (float64 numpy), in the
    layout of its `geometry` (see the module docstring)."""
    if isinstance(layer, SEPARABLE):
        depthwise, pointwise = _numpy(layer.depthwise_kernel), _numpy(layer.pointwise_kernel)
        *size, channels, multiplier = depthwise.shape
        pointwise = pointwise.reshape(channels, multiplier, -1)
        return np.einsum("...cj,cjo->...co", depthwise, pointwise)
    kernel = _numpy(layer.kernel)
    if isinstance(layer, DEPTHWISE):
        return kernel.reshape(*kernel.shape[:-2], 1, -1)
    return kernel


def groups(layer):
    """The groups of ``layer``'s map: a convolution's own, the input
    channels of a depthwise one, else 1."""
    if isinstance(layer, DEPTHWISE):
        return int(layer.kernel.shape[-2])
    return int(getattr(layer, "groups", 1) or 1) if isinstance(layer, CONVOLUTIONS) else 1


def geometry(layer, input_shape):
    """The `OperatorGeometry` of ``layer`` on inputs of
    ``input_shape`` (with batch axis); the data format only permutes
    coordinates, which leaves every norm as it is."""
    if not is_linear(layer):
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) is not a linear layer "
            f"this library knows; known: {', '.join(t.__name__ for t in LINEAR_LAYERS)}."
        )
    if isinstance(layer, keras.layers.Dense):
        return operators.OperatorGeometry(operators.DENSE)
    rank = len(layer.kernel_size)
    first = 1 if layer.data_format == "channels_last" else 2
    size = tuple(input_shape[first : first + rank])
    if len(size) != rank or any(d is None for d in size):
        raise ValueError(
            f"The input size of layer {layer.name!r} is unknown "
            f"(input shape {tuple(input_shape)}), and a convolution's "
            "Lipschitz constant depends on it. Pass "
            "`input_shape=` (without the batch axis) to keras_capacity.bind."
        )
    if isinstance(layer, TRANSPOSED):
        kind = operators.CONV_TRANSPOSE
    else:
        kind = operators.CONV2D if rank == 2 else operators.CONV
    padding = "circular" if isinstance(layer, capacity_layers.CircularConv2D) else layer.padding
    return operators.OperatorGeometry(
        kind,
        input_size=size,
        strides=layer.strides,
        dilation=layer.dilation_rate,
        padding=padding,
        groups=groups(layer),
        output_padding=getattr(layer, "output_padding", None),
    )


def input_axis(geometry):
    """The axis of the map kernel that the (2,1) norm is taken over."""
    return -1 if geometry.kind == operators.CONV_TRANSPOSE else -2


def distance21(kernel, initial, geometry):
    """``||K - K0||_{2,1}`` of two map kernels (float64): the Euclidean norm
    over the input axis (`input_axis`) for every output unit and
    kernel position, summed."""
    delta = np.asarray(kernel, np.float64) - np.asarray(initial, np.float64)
    return float(np.linalg.norm(delta, axis=input_axis(geometry)).sum())


# How LipDist's variable holds the map kernel (see `layout`).
KERNEL, DEPTHWISE_LAYOUT, SEPARABLE_LAYOUT = "kernel", "depthwise", "separable"
LAYOUTS = (KERNEL, DEPTHWISE_LAYOUT, SEPARABLE_LAYOUT)


def layout(layer):
    """How the variable that `LipDist` constrains
    holds ``layer``'s map kernel.

    * ``"kernel"`` (Dense, every convolution, transposed ones too): the
      variable is the map kernel.
    * ``"depthwise"``: the variable is the ``(*k, in, m)`` depthwise kernel,
      the map kernel its reshape to ``(*k, 1, in m)`` (`to_map_kernel`).
    * ``"separable"``: the variable is the pointwise kernel, and the map
      kernel composes it with the depthwise one (`compose`); the
      constraint projects both.
    """
    if isinstance(layer, DEPTHWISE):
        return DEPTHWISE_LAYOUT
    if isinstance(layer, SEPARABLE):
        return SEPARABLE_LAYOUT
    return KERNEL


def constraint_argument(layer):
    """The constructor argument that takes ``layer``'s ``LipDist``:
    ``depthwise_constraint`` for a depthwise layer, ``pointwise_constraint``
    for a separable one (the constraint of the composed map, which projects
    both kernels), ``kernel_constraint`` otherwise."""
    return {
        DEPTHWISE_LAYOUT: "depthwise_constraint",
        SEPARABLE_LAYOUT: "pointwise_constraint",
    }.get(layout(layer), "kernel_constraint")


def variable_name(layout_name):
    """The attribute of the layer's variable a ``LipDist`` of this layout
    constrains."""
    return "pointwise_kernel" if layout_name == SEPARABLE_LAYOUT else "kernel"


def constrained_variable(layer):
    """The variable of ``layer`` that its ``LipDist`` constrains."""
    return getattr(layer, variable_name(layout(layer)))


def compose(depthwise, pointwise):
    """The one kernel ``(*k, in, out)`` of depthwise ``(*k, in, m)`` then
    pointwise ``(1, ..., 1, in m, out)``: ``K[..., c, o] = sum_j D[..., c, j]
    P[c m + j, o]`` (tensors, ``keras.ops``)."""
    channels, multiplier = depthwise.shape[-2], depthwise.shape[-1]
    pointwise = ops.reshape(pointwise, (channels, multiplier, -1))
    return ops.einsum("...cj,cjo->...co", depthwise, pointwise)


def map_kernel_shape(layout_name, kernel_shape, partner_shape=None):
    """The map kernel's shape for a variable of ``kernel_shape`` (and, for
    a separable layer, the depthwise kernel's ``partner_shape``)."""
    kernel_shape = tuple(int(d) for d in kernel_shape)
    if layout_name == DEPTHWISE_LAYOUT:
        return (*kernel_shape[:-2], 1, kernel_shape[-2] * kernel_shape[-1])
    if layout_name == SEPARABLE_LAYOUT:
        return (*tuple(int(d) for d in partner_shape[:-1]), kernel_shape[-1])
    return kernel_shape


def to_map_kernel(value, layout_name, partner=None):
    """The map kernel (a tensor) from the constrained variable's ``value``
    (and the depthwise kernel ``partner`` of a separable layer)."""
    if layout_name == DEPTHWISE_LAYOUT:
        return ops.reshape(value, map_kernel_shape(layout_name, value.shape))
    if layout_name == SEPARABLE_LAYOUT:
        return compose(partner, value)
    return value


def from_map_kernel(kernel, layout_name, shape):
    """The inverse of `to_map_kernel` for the layouts that are a
    reshape (a separable kernel is projected as its two factors)."""
    if layout_name == SEPARABLE_LAYOUT:
        raise ValueError("A separable layer's composed kernel has no inverse; project its factors.")
    return ops.reshape(kernel, shape)


def bounds_reason(layer):
    """Why the twelve bounds cannot describe ``layer``, or ``None``.

    They are stated for chains of 2-D convolutions and dense maps, whose
    input sizes they square. Grouped, depthwise and separable 2-D layers are
    such convolutions (the groups' kernels embedded block-diagonally, the
    separable kernel composed), so their terms are those of that plain
    convolution; 1-D, 3-D and transposed convolutions are not."""
    if isinstance(layer, TRANSPOSED):
        return (
            f"layer {layer.name!r} is a transposed convolution ({type(layer).__name__}), "
            "not a convolution of its input: the bounds' input sizes, strides and patch "
            "norms do not describe it"
        )
    if not isinstance(layer, keras.layers.Dense) and len(layer.kernel_size) != 2:
        return (
            f"layer {layer.name!r} is a {len(layer.kernel_size)}-D convolution "
            f"({type(layer).__name__}); the bounds' formulas count the positions of 2-D "
            "inputs (d_i^2)"
        )
    return None
