"""The model as the twelve bounds see it: a chain of kernels (SPEC §10).

**When the bounds apply.** The twelve bounds are stated for a chain
``sigma_L(A_L ... sigma_1(A_1 x))`` of linear maps ``A_i`` (the kernels)
and fixed maps ``sigma_i`` that are 1-Lipschitz (ReLU, pooling that no
pixel enters twice, flattening, dropout at inference). `chain_of`
checks a model against that, and the rule is:

* ``BatchNormalization`` right before or after a kernel, with no
  nonlinearity between them, is folded into it at inference: its scale
  ``gamma / sqrt(var + eps)`` multiplies the kernel's output (or input)
  channels, so ``s_i`` and ``b_i`` are those of the linear map the network
  computes, with the initial BatchNorm folded into ``K0`` alike. Its shift
  and the biases are not capacity terms (the paper's networks have none,
  and the field's measurements leave them out); the record says which
  layers have them.
* Every kernel is a dense map or a 2-D convolution. Grouped, depthwise and
  separable 2-D convolutions are plain convolutions whose kernels are
  block-diagonal (the groups') or composed (depthwise then pointwise), so
  their terms are that plain convolution's: norms and distances of its
  kernel (the zeros outside the groups add nothing), its ``in_channels``
  and its parameter count ``k_h k_w in out``, an upper bound on the
  layer's own (the theorems hold for every plain convolution, so for this
  one). 1-D, 3-D and transposed convolutions make the bounds not
  applicable (`keras_capacity.linear_layers.bounds_reason`).
* Fixed layers before the first kernel are preprocessing: the data terms
  (``||X||``, patch norms) are measured on the first kernel's input.
* Anything else makes every bound *not applicable*, with the reason: a
  layer that merges several inputs (residual ``Add``, ``Concatenate``), a
  fixed layer with a constant above 1 between kernels (an overlapping max
  pool is 2-Lipschitz), a BatchNorm or other trained layer that cannot be
  folded, a nested model. The network Lipschitz bound, the layer table,
  margins and certified accuracy are exact upper bounds for any graph and
  are always given.
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_capacity import binding, linear_layers, network

KERNEL_LAYERS = linear_layers.LINEAR_LAYERS


@dataclasses.dataclass(frozen=True)
class Chain:
    """A model as the bounds see it.

    ``kernels``: the linear layers (`KERNEL_LAYERS`) in forward order;
    ``folded``: ``{kernel name: (BatchNormalization layer, "after" or
    "before")}``; ``reason``: why the bounds do not apply, or ``None``.
    """

    kernels: tuple
    folded: dict
    reason: str | None


def _graph_path(model):
    """The layers from the input to the single output, or ``(None, reason)``."""
    if isinstance(model, keras.Sequential):
        path = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        return path, None
    path, tensor = [], model.outputs[0]
    while True:
        operation, node_index, _ = tensor._keras_history
        inputs = operation._inbound_nodes[node_index].input_tensors
        if not inputs:
            return path[::-1], None
        if len(inputs) > 1:
            return None, (
                f"layer {operation.name!r} ({type(operation).__name__}) merges "
                f"{len(inputs)} inputs: the model is not a chain (a residual or "
                "multi-branch network)"
            )
        path.append(operation)
        tensor = inputs[0]


def _foldable(batch_norm):
    axis = batch_norm.axis if isinstance(batch_norm.axis, int) else None
    rank = len(batch_norm.get_build_config()["input_shape"])
    return axis in (-1, rank - 1)


def chain_of(model: keras.Model) -> Chain:
    """The model's kernels in forward order, the BatchNorms folded into
    them, and why the twelve bounds do not apply (``None`` when they do);
    see the module docstring for the rule."""
    path, reason = _graph_path(model)
    kernels = [layer for layer in binding.walk_layers(model) if isinstance(layer, KERNEL_LAYERS)]
    if reason is not None:
        return Chain(tuple(kernels), {}, reason)
    folded, seen_kernel = {}, False
    for index, layer in enumerate(path):
        before = path[index - 1] if index > 0 else None
        after = path[index + 1] if index + 1 < len(path) else None
        if isinstance(layer, keras.Model):
            return Chain(tuple(kernels), {}, f"nested model {layer.name!r}: flatten it first")
        if isinstance(layer, KERNEL_LAYERS):
            seen_kernel = True
            kind_reason = linear_layers.bounds_reason(layer)
            if kind_reason is not None:
                return Chain(tuple(kernels), {}, kind_reason)
            own = network.activation_lipschitz(layer.activation, repr(layer.name))
            if own > 1:
                return Chain(
                    tuple(kernels),
                    {},
                    f"layer {layer.name!r}'s activation has Lipschitz constant {own:g} > 1; "
                    "the theorems assume 1-Lipschitz activations",
                )
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            side = None
            if (
                isinstance(before, KERNEL_LAYERS)
                and getattr(before.activation, "__name__", "") == "linear"
                and before.name not in folded
            ):
                side, target = "after", before
            elif isinstance(after, KERNEL_LAYERS) and after.name not in folded:
                side, target = "before", after
            if side is None or not _foldable(layer):
                return Chain(
                    tuple(kernels),
                    {},
                    f"BatchNormalization {layer.name!r} is not next to a linear layer without "
                    "a nonlinearity between them, so it cannot be folded into a kernel, and "
                    "its trained scale is in no capacity term",
                )
            folded[target.name] = (layer, side)
            continue
        if not seen_kernel:
            continue  # preprocessing: the data terms are measured after it
        if layer.trainable_weights:
            return Chain(
                tuple(kernels),
                {},
                f"layer {layer.name!r} ({type(layer).__name__}) has trained weights that "
                "are in no capacity term",
            )
        constant = network.layer_lipschitz(layer, layer.input.shape)
        if constant > 1 + 1e-9:
            return Chain(
                tuple(kernels),
                {},
                f"layer {layer.name!r} ({type(layer).__name__}) has Lipschitz constant "
                f"{constant:.4g} > 1 between the kernels; the theorems assume 1-Lipschitz "
                "maps there",
            )
    on_path = {id(layer) for layer in path}
    stray = [layer.name for layer in kernels if id(layer) not in on_path]
    if stray:
        return Chain(tuple(kernels), {}, f"layers {stray} are not on the path to the output")
    return Chain(tuple(layer for layer in path if isinstance(layer, KERNEL_LAYERS)), folded, None)


# ------------------------------------------------------ BatchNorm folding


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def _batch_norm_scale(layer, initial=False):
    """``gamma / sqrt(var + eps)`` per channel; ``initial`` evaluates the
    layer's own initializers (the values it started from)."""
    if initial:
        shape = tuple(layer.moving_variance.shape)
        variance = _numpy(layer.moving_variance_initializer(shape))
        gamma = _numpy(layer.gamma_initializer(shape)) if layer.scale else 1.0
    else:
        variance = _numpy(layer.moving_variance)
        gamma = _numpy(layer.gamma) if layer.scale else 1.0
    return gamma / np.sqrt(variance + layer.epsilon)


def _fold(kernel, scale, side, groups=1):
    """The map kernel ``(..., in / groups, out)`` with a per-channel scale
    folded into its output (``after``) or input (``before``) channels; the
    input channel ``i`` of output ``o``'s group ``g`` is ``g in / groups + i``."""
    if side == "after":
        return kernel * scale
    per_group = kernel.shape[-1] // groups
    inputs = np.repeat(scale.reshape(groups, -1).T, per_group, axis=1)  # (in / groups, out)
    return kernel * inputs


def folded_kernels(layer, kernel, initial, chain, initial_layers):
    """``(kernel, initial)`` of the map the chain sees: the BatchNorm folded
    into ``layer`` (at its trained and at its initial statistics)."""
    if layer.name not in chain.folded:
        return kernel, initial
    batch_norm, side = chain.folded[layer.name]
    groups = linear_layers.groups(layer)
    kernel = _fold(kernel, _batch_norm_scale(batch_norm), side, groups)
    if initial is not None:
        if initial_layers is not None:
            start = _batch_norm_scale(initial_layers[batch_norm.name])
        else:
            start = _batch_norm_scale(batch_norm, initial=True)
        initial = _fold(initial, start, side, groups)
    return kernel, initial
