"""Constraining an existing Keras model: `constrain`."""

import math
import warnings

import keras
from keras.src.models.functional import Functional  # what keras.Model(inputs, outputs) builds

from keras_capacity import binding, linear_layers
from keras_capacity.constraints import LipDist

_SETTINGS = ("lip", "dist", "mode", "n_iter", "every")


def _supported(layer):
    """Whether ``LipDist`` can constrain the layer's map: every linear
    layer (`keras_capacity.linear_layers.LINEAR_LAYERS`)."""
    return linear_layers.is_linear(layer)


def _settings_for(layer, defaults, overrides):
    """The LipDist settings of ``layer``: the defaults, updated by the
    override for its name, else by the first override for a type it is an
    instance of. ``None`` as an override leaves the layer as it is."""
    chosen = overrides.get(layer.name, ...)
    if chosen is ...:
        for key, value in overrides.items():
            if isinstance(key, type) and isinstance(layer, key):
                chosen = value
                break
    if chosen is None:
        return None
    settings = dict(defaults)
    if chosen is not ...:
        unknown = set(chosen) - set(_SETTINGS)
        if unknown:
            raise ValueError(
                f"constrain: unknown settings {sorted(unknown)} for layer "
                f"{layer.name!r}; allowed: {_SETTINGS}."
            )
        settings.update(chosen)
    return settings


def _check_overrides(model, overrides):
    names = {layer.name for layer in binding.walk_layers(model)}
    for key in overrides:
        if isinstance(key, str) and key not in names:
            raise ValueError(f"constrain: the model has no layer named {key!r}.")
        if not isinstance(key, (str, type)):
            raise ValueError(
                f"constrain: override keys are layer names or layer types, got {key!r}."
            )


def constrain(
    model: keras.Model,
    lip: float = math.inf,
    dist: float = math.inf,
    mode: str = "radial",
    n_iter: int = 1,
    every: int = 1,
    overrides: dict | None = None,
) -> keras.Model:
    """A copy of ``model`` with a `LipDist` on every supported kernel.

    The copy (``keras.models.clone_model``) has the original weights; every
    linear layer (``Dense``; ``Conv1D``/``2D``/``3D`` with any groups;
    depthwise, separable and transposed convolutions) gets ``LipDist(lip,
    dist, mode=..., n_iter=..., every=...)`` on its map (as its
    ``kernel_constraint``, ``depthwise_constraint`` or, for a separable
    layer, ``pointwise_constraint``) and the model is bound
    (`keras_capacity.bind`), so kernels above ``lip`` are scaled down
    and ``K0`` is recorded. It is ready to compile and fit. With
    ``mode="orthogonal"``, give the layers that have no nearest kernel
    (zero-padded and separable ones) ``{"mode": "radial"}`` by override,
    or ``bind`` refuses them.

    Layers with trainable weights that stay unconstrained (BatchNorm,
    embeddings, ...) are counted in one ``UserWarning`` line;
    nothing is skipped silently. A constraint the layer's map already had
    is replaced, with a warning.

    >>> model = constrain(keras.applications.ResNet50(weights=None),
    ...                   lip=2.0, dist=100,
    ...                   overrides={"predictions": {"dist": 50},
    ...                              keras.layers.Dense: {"lip": 1.0}})

    Args:
        model: a built Sequential or functional model.
        lip, dist, mode, n_iter, every: the defaults for every layer.
        overrides: ``{layer name or layer type: dict of settings}``, the
            settings being any of ``lip, dist, mode, n_iter, every``; a name
            wins over a type, and ``None`` leaves the layer unconstrained.

    Returns:
        The constrained, bound copy.
    """
    if not isinstance(model, (keras.Sequential, Functional)):
        raise ValueError(
            f"constrain needs a Sequential or functional model; {model.name!r} "
            f"is a {type(model).__name__}. Subclassed models can set "
            "`kernel_constraint=LipDist(...)` themselves."
        )
    overrides = dict(overrides or {})
    _check_overrides(model, overrides)
    defaults = dict(lip=lip, dist=dist, mode=mode, n_iter=n_iter, every=every)
    LipDist(**defaults)  # validates the defaults before any copying
    replaced, left_out = [], []

    def clone(layer):
        config = layer.get_config()
        settings = _settings_for(layer, defaults, overrides) if _supported(layer) else None
        if settings is not None:
            argument = linear_layers.constraint_argument(layer)
            if config.get(argument) is not None:
                replaced.append(layer.name)
            config[argument] = LipDist(**settings)
        elif layer.trainable_weights and not isinstance(layer, keras.Model):
            left_out.append(layer)
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    if replaced:
        warnings.warn(f"constrain: replaced the kernel constraints of {replaced}.", stacklevel=2)
    if left_out:
        warnings.warn(f"constrain: {_summary(left_out)}", stacklevel=2)
    binding.bind(copy)
    return copy


def unconstrained_layers(model: keras.Model) -> list[str]:
    """The names of the layers of ``model`` with trainable weights and no
    ``LipDist`` (what `constrain`'s warning counts), in order."""
    constrained = {id(layer) for layer, _ in binding.constrained_layers(model)}
    return [
        layer.name
        for layer in binding.walk_layers(model)
        if layer.trainable_weights
        and not isinstance(layer, keras.Model)
        and id(layer) not in constrained
        and not hasattr(layer, "lipschitz_constant")
    ]


def _summary(layers, shown=3):
    """One short line: how many layers of each type stay unconstrained, the
    first few names of each, and how to list them all."""
    by_type = {}
    for layer in layers:
        by_type.setdefault(type(layer).__name__, []).append(layer.name)
    parts = []
    for kind, names in by_type.items():
        first = ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
        parts.append(f"{len(names)} {kind} ({first})")
    count = (
        f"{len(layers)} layers with trainable weights stay"
        if len(layers) > 1
        else ("1 layer with trainable weights stays")
    )
    return (
        f"{count} unconstrained: {'; '.join(parts)}. "
        "keras_capacity.retrofit.unconstrained_layers(model) lists them all."
    )
