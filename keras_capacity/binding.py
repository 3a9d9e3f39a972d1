"""Connecting ``LipDist`` constraints to their layers, and measuring layers.

A convolution's Lipschitz constant depends on its input's spatial size,
padding, strides and dilation, which a Keras constraint never sees, and the
distance constraint needs the initial kernel ``K0``. `bind` supplies
both; `project` projects every constrained layer now;
`lipschitz` and `distance` are the numbers we report.
"""

from collections.abc import Iterator

import keras
import numpy as np

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
    # On PyTorch a layer is a torch module, which keeps its sub-modules (a
    # LipDist is a Keras layer, for its variables) apart from its attributes.
    named_children = getattr(layer, "named_children", None)
    attributes = dict(named_children() if named_children is not None else ())
    attributes.update(vars(layer))
    for name, value in attributes.items():
        if isinstance(value, constraints.LipDist):
            found.append((name, value))
        constraint = getattr(value, "constraint", None)
        if isinstance(value, keras.Variable) and isinstance(constraint, constraints.LipDist):
            if all(constraint is not c for _, c in found):
                found.append((f"{name}.constraint", constraint))
    return found


def _check_supported(layer, attribute, constraint):
    if not linear_layers.is_linear(layer):
        raise ValueError(
            f"LipDist is set on layer {layer.name!r} of type "
            f"{type(layer).__name__}, which it does not support. It supports "
            "the linear layers: "
            f"{', '.join(t.__name__ for t in linear_layers.LINEAR_LAYERS)}."
        )
    argument = linear_layers.constraint_argument(layer)
    variable = linear_layers.constrained_variable(layer) if layer.built else None
    wrong_variable = variable is not None and variable.constraint is not constraint
    if attribute != argument or wrong_variable:
        raise ValueError(
            f"LipDist on layer {layer.name!r} ({type(layer).__name__}) is set as "
            f"{attribute!r}; it constrains the layer's map through `{argument}=LipDist(...)`."
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
    """The `OperatorGeometry` of ``layer`` on inputs of ``input_shape``
    (with batch axis): `keras_capacity.linear_layers.geometry`."""
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
        variable, layout = linear_layers.constrained_variable(layer), linear_layers.layout(layer)
        partner = layer.depthwise_kernel if layout == linear_layers.SEPARABLE_LAYOUT else None
        with backend.strategy_scope_of(variable):
            constraint.layer_name = layer.name
            constraint.attach(partner)
            constraint.create_state(
                variable.shape,
                geometry,
                variable.dtype,
                layout,
                None if partner is None else partner.shape,
            )
            constraint.initialize(variable)
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
        variable = linear_layers.constrained_variable(layer)
        with backend.strategy_scope_of(variable):
            variable.assign(constraint.project(variable, n_iter))


def kernel_lipdist(layer: keras.layers.Layer) -> constraints.LipDist | None:
    """The bound ``LipDist`` of ``layer``'s map (its ``kernel_constraint``,
    a depthwise layer's ``depthwise_constraint``, a separable one's
    ``pointwise_constraint``), or ``None``."""
    if not linear_layers.is_linear(layer):
        return None
    constraint = getattr(layer, linear_layers.constraint_argument(layer), None)
    if isinstance(constraint, constraints.LipDist) and constraint.is_bound:
        return constraint
    return None


def lipschitz(layer: keras.layers.Layer) -> float:
    """The Lipschitz constant of ``layer``'s linear map, as a float.

    Any linear layer (`keras_capacity.linear_layers.LINEAR_LAYERS`:
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

    ``K`` is the layer's map kernel, and the norm is taken over its input
    axis for every output unit and kernel position, then summed
    (`keras_capacity.linear_layers.distance21`). Needs a bound
    ``LipDist`` (which holds ``K0``); a `SimplexClassifier` never
    trains and is always at 0.
    """
    if isinstance(layer, capacity_layers.SimplexClassifier):
        return 0.0
    constraint = kernel_lipdist(layer)
    if constraint is None:
        raise ValueError(
            f"Layer {layer.name!r} has no bound LipDist, so it has no K0 to "
            "measure the distance from. Call keras_capacity.bind(model)."
        )
    return linear_layers.distance21(
        linear_layers.map_kernel(layer), constraint.initial_map_kernel(), constraint.geometry
    )
