"""Connecting ``LipDist`` constraints to their layers, and measuring layers.

A convolution's Lipschitz constant depends on its input's spatial size,
padding, strides and dilation, which a Keras constraint never sees, and the
distance constraint needs the initial kernel ``K0``. :func:`bind` supplies
both; :func:`project` projects every constrained layer now;
:func:`lipschitz` and :func:`distance` are the numbers we report.
"""

from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

from keras_capacity import backend, constraints, exact_norms, linear_layers
from keras_capacity import layers as capacity_layers


def _children(layer):
    """The layers directly inside ``layer``: a model's ``layers``, or the
    layers a custom layer holds as attributes (its LipDists excepted)."""
    if hasattr(layer, "layers"):
        return list(layer.layers)
    children = []
    for value in vars(layer).values():
        values = value if isinstance(value, (list, tuple)) else [value]
        children.extend(
            v
            for v in values
            if isinstance(v, keras.layers.Layer) and not isinstance(v, constraints.LipDist)
        )
    return children


def walk_layers(root: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer under ``root``, each once, depth first."""
    seen, stack = set(), _children(root)[::-1]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(_children(layer)[::-1])


def lipdists_of(layer):
    """``(attribute, LipDist)`` for every LipDist the layer itself holds, as
    an attribute or as the constraint of one of its own variables."""
    found = []
    for name, value in vars(layer).items():
        if isinstance(value, constraints.LipDist):
            found.append((name, value))
        constraint = getattr(value, "constraint", None)
        if isinstance(value, keras.Variable) and isinstance(constraint, constraints.LipDist):
            if all(constraint is not c for _, c in found):
                found.append((f"{name}.constraint", constraint))
    return found


def _check_supported(layer, attribute, constraint):
    supported = isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))
    if not supported:
        raise ValueError(
            f"LipDist is set on layer {layer.name!r} of type "
            f"{type(layer).__name__}, which it does not support. It supports "
            "the kernel of keras.layers.Dense, keras.layers.Conv2D and "
            "keras_capacity.CircularConv2D."
        )
    wrong_variable = layer.built and layer.kernel.constraint is not constraint
    if attribute != "kernel_constraint" or wrong_variable:
        raise ValueError(
            f"LipDist on layer {layer.name!r} is set as {attribute!r}; it "
            "constrains kernels only: use `kernel_constraint=LipDist(...)`."
        )
    if isinstance(layer, keras.layers.Conv2D) and layer.groups != 1:
        raise ValueError(
            f"LipDist does not support grouped convolutions (layer "
            f"{layer.name!r} has groups={layer.groups})."
        )


def constrained_layers(model: keras.Model) -> list[tuple[keras.layers.Layer, constraints.LipDist]]:
    """``[(layer, LipDist)]`` for every ``LipDist`` in ``model``.

    Raises ``ValueError`` for a ``LipDist`` on a layer or variable it does
    not support, or one object shared by several layers.
    """
    result, owners = [], {}
    for layer in walk_layers(model):
        for attribute, constraint in lipdists_of(layer):
            _check_supported(layer, attribute, constraint)
            if id(constraint) in owners and owners[id(constraint)] is not layer:
                raise ValueError(
                    f"One LipDist object is shared by layers "
                    f"{owners[id(constraint)].name!r} and {layer.name!r}; "
                    "give every layer its own LipDist (it stores that "
                    "layer's K0)."
                )
            if id(constraint) not in owners:
                owners[id(constraint)] = layer
                result.append((layer, constraint))
    return result


def operator_geometry(layer, input_shape):
    """The :class:`OperatorGeometry` of ``layer`` on inputs of ``input_shape``
    (with batch axis): :func:`keras_capacity.linear_layers.geometry`."""
    return linear_layers.geometry(layer, input_shape)


def _recorded_input_shapes(model, layers, input_shape):
    """Runs ``model`` once on zeros of ``input_shape``, recording the input
    shape each of ``layers`` is called with."""
    shapes = {}

    def recording(layer, call):
        def record(inputs, *args, **kwargs):
            shapes[id(layer)] = tuple(inputs.shape)
            return call(inputs, *args, **kwargs)

        return record

    if isinstance(input_shape, list):
        inputs = [np.zeros((1, *shape), "float32") for shape in input_shape]
    else:
        inputs = np.zeros((1, *input_shape), "float32")
    patched = []
    try:
        for layer in layers:
            object.__setattr__(layer, "call", recording(layer, layer.call))
            patched.append(layer)
        model(inputs)
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
    missing = [layer.name for layer in layers if id(layer) not in shapes]
    if missing:
        raise ValueError(f"Layers {missing} were not called by the model.")
    return shapes


def bind(
    model: keras.Model, input_shape: tuple | list | None = None
) -> list[tuple[keras.layers.Layer, constraints.LipDist]]:
    """Gives every ``LipDist`` in ``model`` its layer's geometry and ``K0``.

    For each constrained layer this records how the kernel acts (a
    convolution's input size ``H x W``, padding, strides, dilation), scales
    the kernel down to ``lip`` if its Lipschitz constant is above it, and
    stores the result as ``K0``. Call it once, after building the model and
    before training; a ``LipDist`` that was never bound stops the first
    training step with an error that says to call this.

    Binding again is harmless: state that is already set, or was restored
    by ``load_model``/``load_weights``/``set_weights``, is kept, so ``K0``
    stays the original one.

    Args:
        model: a built Sequential or functional model, or any model when
            ``input_shape`` is given.
        input_shape: the shape of one input without the batch axis (a list
            of shapes for several inputs). Needed for subclassed models that
            were never called and for inputs of unknown spatial size; the
            model is then run once on zeros of this shape.

    Returns:
        ``[(layer, LipDist)]`` for the constrained layers.
    """
    pairs = constrained_layers(model)
    layers = [layer for layer, _ in pairs]
    if input_shape is not None:
        shapes = _recorded_input_shapes(model, layers, input_shape)
    else:
        shapes = {}
        for layer in layers:
            build = layer.get_build_config() if layer.built else None
            if not build:
                raise ValueError(
                    f"Layer {layer.name!r} is not built, so its input shape "
                    "is unknown. Build the model first (give it an "
                    "keras.Input), or pass `input_shape=` to bind."
                )
            shapes[id(layer)] = tuple(build["input_shape"])
    for layer, constraint in pairs:
        geometry = operator_geometry(layer, shapes[id(layer)])
        with backend.strategy_scope_of(layer.kernel):
            constraint.layer_name = layer.name
            constraint.create_state(layer.kernel.shape, geometry, layer.kernel.dtype)
            constraint.initialize(layer.kernel)
    if isinstance(model, keras.Model):
        backend.install_projection_step(model, pairs)
    return pairs


def project(model: keras.Model, n_iter: int | None = None) -> None:
    """Projects every constrained layer of ``model`` now.

    The reference does this once more with 15 rounds after the last epoch
    (``project(model, n_iter=15)``).

    Args:
        model: a model whose constraints are bound.
        n_iter: alternating rounds; default each constraint's own.
    """
    for layer, constraint in constrained_layers(model):
        with backend.strategy_scope_of(layer.kernel):
            layer.kernel.assign(constraint.project(layer.kernel, n_iter))


def kernel_lipdist(layer: keras.layers.Layer) -> constraints.LipDist | None:
    """The bound ``LipDist`` of ``layer``'s kernel, or ``None``."""
    constraint = getattr(layer, "kernel_constraint", None)
    if isinstance(constraint, constraints.LipDist) and constraint.is_bound:
        return constraint
    return None


def lipschitz(layer: keras.layers.Layer) -> float:
    """The Lipschitz constant of ``layer``'s linear map, as a float.

    Any linear layer (:data:`keras_capacity.linear_layers.LINEAR_LAYERS`:
    ``Dense``; ``Conv1D``/``2D``/``3D`` with any padding, strides,
    dilation and groups; depthwise, separable and transposed
    convolutions). Exact for Dense (SVD) and ``CircularConv2D`` whose
    strides divide the input (FFT, folded for strides); otherwise Lanczos
    in float64 converged far below a relative error of 1e-5 (a grouped or
    depthwise convolution: the largest over its groups; a separable one:
    the composed map's). The map is the one on the layer's bound input (or
    the input it was built on, for a layer without ``LipDist``); the bias
    is ignored.
    """
    if not linear_layers.is_linear(layer):
        raise ValueError(
            "lipschitz() supports Dense and Conv2D layers and Keras's other convolutions "
            f"(1-D, 3-D, depthwise, separable, transposed), got {type(layer).__name__} "
            f"{layer.name!r}."
        )
    constraint = kernel_lipdist(layer)
    if constraint is not None:
        geometry = constraint.geometry
    elif layer.built:
        geometry = operator_geometry(layer, layer.get_build_config()["input_shape"])
    else:
        raise ValueError(f"Layer {layer.name!r} is not built.")
    return exact_norms.spectral_norm(linear_layers.map_kernel(layer), geometry)


def distance(layer: keras.layers.Layer) -> float:
    """``||K - K0||_{2,1}`` of ``layer`` as a float (float64 arithmetic).

    The norm is taken over the input axis for every output unit and kernel
    position, then summed. Needs a bound ``LipDist`` (which holds ``K0``);
    a :class:`SimplexClassifier` never trains and is always at 0.
    """
    if isinstance(layer, capacity_layers.SimplexClassifier):
        return 0.0
    constraint = kernel_lipdist(layer)
    if constraint is None:
        raise ValueError(
            f"Layer {layer.name!r} has no bound LipDist, so it has no K0 to "
            "measure the distance from. Call keras_capacity.bind(model)."
        )
    delta = ops.convert_to_numpy(layer.kernel).astype(np.float64) - np.asarray(
        ops.convert_to_numpy(constraint.initial_kernel), np.float64
    )
    return float(np.linalg.norm(delta, axis=-2).sum())
