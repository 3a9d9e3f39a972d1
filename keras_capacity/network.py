"""Measuring a whole network: per-layer table, Lipschitz bound, margins and
spectral complexity.

The network's Lipschitz upper bound follows the model's graph: a layer
multiplies the bound of its input by its own constant, ``Add`` sums the
bounds of its inputs (a residual block contributes ``shortcut + s1 * s2``),
``Concatenate`` takes the root of the sum of squares. Every layer must have
a known constant, else a ``ValueError`` names it: a silently ignored layer
would make the bound wrong. Unlike the reference, the bound includes
BatchNorm (its inference-mode constant) and the pools' own constants (an
overlapping 3x3/2 max-pool is 2-Lipschitz, a global average pool over
``H x W`` is ``1/sqrt(HW)``).
"""

import math
from collections.abc import Iterable

import keras
import numpy as np
from keras import ops

from keras_capacity import binding, constraints, exact_norms, linear_layers
from keras_capacity import layers as capacity_layers

# Largest slope of each activation; softmax's Jacobian has norm <= 1/2, we
# use 1; gelu and silu overshoot 1 slightly (1.1289, 1.0998).
ACTIVATION_LIPSCHITZ = {
    "linear": 1.0,
    "relu": 1.0,
    "relu6": 1.0,
    "leaky_relu": 1.0,
    "elu": 1.0,
    "tanh": 1.0,
    "softplus": 1.0,
    "softmax": 1.0,
    "sigmoid": 0.25,
    "silu": 1.1,
    "swish": 1.1,
    "gelu": 1.129,
}

# Layers that only move, copy or drop coordinates (Dropout is the identity
# at inference).
_ONE_LIPSCHITZ = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.Identity,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
_MAX_POOLS = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
_AVERAGE_POOLS = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
_GLOBAL_AVERAGE_POOLS = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)


def activation_lipschitz(activation, where):
    name = getattr(activation, "__name__", str(activation))
    if name not in ACTIVATION_LIPSCHITZ:
        raise ValueError(
            f"{where}: no known Lipschitz constant for activation {name!r}; "
            f"known: {sorted(ACTIVATION_LIPSCHITZ)}."
        )
    return ACTIVATION_LIPSCHITZ[name]


def _windows(size, pool, stride, padding):
    """Start and stop of each pooling window on one axis, padding excluded
    (as TensorFlow pools)."""
    if padding == "same":
        count = -(-size // stride)
        before = max((count - 1) * stride + pool - size, 0) // 2
    else:
        count, before = (size - pool) // stride + 1, 0
    starts = np.arange(count) * stride - before
    return np.clip(starts, 0, size), np.clip(starts + pool, 0, size)


def _pool_lipschitz(layer, input_shape, average):
    """Max-pool: ``sqrt`` of the most windows one pixel lies in (exact: a
    one-pixel input reaches it). Average pool: Schur's bound ``sqrt(max
    column sum * max row sum)`` of its matrix, rows summing to 1."""
    if layer.data_format != "channels_last":
        raise ValueError(f"{layer.name!r}: only channels_last pooling is supported.")
    worst = 1.0
    sizes = input_shape[1 : 1 + len(layer.pool_size)]
    for size, pool, stride in zip(sizes, layer.pool_size, layer.strides, strict=True):
        start, stop = _windows(size, pool, stride, layer.padding)
        weights = 1.0 / np.maximum(stop - start, 1) if average else np.ones(len(start))
        column = [weights[(start <= j) & (j < stop)].sum() for j in range(size)]
        worst *= max(column)
    return math.sqrt(worst)


def _preprocessing_lipschitz(layer):
    """``Rescaling``: the largest ``|scale|``. ``Normalization``: ``1 /``
    the smallest ``max(sqrt(variance), eps)`` (its divisor), or the largest
    when it inverts. Nearest ``UpSampling1D``/``2D``/``3D``: the root of
    the number of copies of each pixel (``sqrt(s_h s_w)`` in 2-D).
    ``None`` for any other layer."""
    if isinstance(layer, keras.layers.Rescaling):
        return float(np.max(np.abs(np.asarray(layer.scale, np.float64))))
    if isinstance(layer, keras.layers.Normalization):
        divisor = np.maximum(
            np.sqrt(np.asarray(ops.convert_to_numpy(layer.variance), np.float64)),
            keras.config.epsilon(),
        )
        return float(divisor.max() if layer.invert else 1.0 / divisor.min())
    if isinstance(layer, keras.layers.UpSampling2D):
        if layer.interpolation != "nearest":
            raise ValueError(
                f"No known Lipschitz constant for layer {layer.name!r} (UpSampling2D with "
                f"interpolation={layer.interpolation!r}); nearest is supported."
            )
        return math.sqrt(layer.size[0] * layer.size[1])
    if isinstance(layer, (keras.layers.UpSampling1D, keras.layers.UpSampling3D)):
        return math.sqrt(math.prod(np.atleast_1d(layer.size)))  # always nearest
    return None


def batch_norm_lipschitz(layer):
    """Inference-mode BatchNorm ``gamma (x - mean) / sqrt(var + eps) + beta``:
    ``max |gamma| / sqrt(var + eps)`` over channels."""
    variance = np.asarray(ops.convert_to_numpy(layer.moving_variance), np.float64)
    gamma = np.asarray(ops.convert_to_numpy(layer.gamma), np.float64) if layer.scale else 1.0
    return float(np.max(np.abs(gamma) / np.sqrt(variance + layer.epsilon)))


def _kernel_lipschitz(layer, input_shape):
    """The spectral norm of a linear layer's map (bias ignored)."""
    geometry = binding.operator_geometry(layer, input_shape)
    return exact_norms.spectral_norm(linear_layers.map_kernel(layer), geometry)


def _measured_kernel_norm(layer, input_shape, kernel_norms):
    """The kernel's norm from ``kernel_norms`` (a `layer_table`'s),
    when it was measured on this same input shape; else computed."""
    build = layer.get_build_config() if layer.built else None
    same_input = build and tuple(build["input_shape"][1:]) == tuple(input_shape[1:])
    if kernel_norms and same_input and layer.name in kernel_norms:
        return kernel_norms[layer.name]
    return _kernel_lipschitz(layer, input_shape)


def layer_lipschitz(layer, input_shape, kernel_norms=None):
    """The Lipschitz constant (l2) of one layer on inputs of ``input_shape``.

    Any layer can state its own as a ``lipschitz_constant`` attribute
    (`SimplexClassifier`, `PoolingShortcut`, `GroupSort`
    do); a layer without a known constant is a ``ValueError``.
    ``kernel_norms`` (``{layer name: norm}``) reuses norms already measured.
    """
    if hasattr(layer, "lipschitz_constant"):
        return float(layer.lipschitz_constant)
    if isinstance(layer, keras.Model):
        return network_lipschitz(layer, kernel_norms)
    if linear_layers.is_linear(layer):
        own = activation_lipschitz(layer.activation, repr(layer.name))
        return _measured_kernel_norm(layer, input_shape, kernel_norms) * own
    if isinstance(layer, keras.layers.BatchNormalization):
        if kernel_norms and layer.name in kernel_norms:  # folded into a kernel's norm
            return kernel_norms[layer.name]
        return batch_norm_lipschitz(layer)
    if isinstance(layer, keras.layers.Activation):
        return activation_lipschitz(layer.activation, repr(layer.name))
    if isinstance(layer, keras.layers.ReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, keras.layers.LeakyReLU):
        return max(1.0, abs(float(layer.negative_slope)))
    if isinstance(layer, _ONE_LIPSCHITZ):
        return 1.0
    preprocessing = _preprocessing_lipschitz(layer)
    if preprocessing is not None:
        return preprocessing
    if isinstance(layer, _MAX_POOLS):
        return _pool_lipschitz(layer, input_shape, average=False)
    if isinstance(layer, _AVERAGE_POOLS):
        return _pool_lipschitz(layer, input_shape, average=True)
    if isinstance(layer, _GLOBAL_AVERAGE_POOLS):
        axes = input_shape[1:-1] if layer.data_format == "channels_last" else input_shape[2:]
        return 1.0 / math.sqrt(math.prod(axes))
    raise ValueError(
        f"No known Lipschitz constant for layer {layer.name!r} "
        f"({type(layer).__name__}); give it a `lipschitz_constant` attribute."
    )


def _merge(layer, bounds):
    """The bound of a layer with several inputs, from its inputs' bounds."""
    if isinstance(layer, (keras.layers.Add, keras.layers.Subtract)):
        return sum(bounds)
    if isinstance(layer, keras.layers.Average):
        return sum(bounds) / len(bounds)
    if isinstance(layer, keras.layers.Concatenate):
        return math.sqrt(sum(b * b for b in bounds))
    raise ValueError(
        f"No Lipschitz rule for layer {layer.name!r} ({type(layer).__name__}) "
        "with several inputs; supported: Add, Subtract, Average, Concatenate."
    )


def kernel_norms(rows):
    """``{layer name: Lipschitz constant}`` of a `layer_table`, for
    `network_lipschitz` to reuse; ``None`` if names repeat."""
    names = [r["name"] for r in rows]
    if len(set(names)) < len(names):
        return None
    return {r["name"]: r["lipschitz"] for r in rows}


def network_lipschitz(model: keras.Model, kernel_norms: dict | None = None) -> float:
    """An upper bound on the l2 Lipschitz constant of ``model``'s map, from
    its layers' constants along its graph (float). ``kernel_norms`` (see
    `kernel_norms`) reuses spectral norms measured for a layer table.

    For a chain of layers this is the product of their constants; for a
    pre-activation residual block ``shortcut + s1 * s2`` (times the
    constants the two paths share). Works on Sequential and functional
    models, nested ones included; the whole input (all inputs together) and
    the whole output are measured in l2.
    """
    if isinstance(model, keras.Sequential):
        bound = 1.0
        for layer in model.layers:
            bound *= layer_lipschitz(layer, layer.input.shape, kernel_norms)
        return bound
    if not hasattr(model, "operations") or not model.outputs:
        raise ValueError(
            f"network_lipschitz needs a Sequential or functional model; "
            f"{model.name!r} is a subclassed model without a graph."
        )
    memo = {}

    def bound_of(tensor):
        key = id(tensor)
        if key not in memo:
            operation, node_index, _ = tensor._keras_history
            node = operation._inbound_nodes[node_index]
            inputs = node.input_tensors
            if not inputs:
                memo[key] = 1.0
            elif len(inputs) == 1:
                own = layer_lipschitz(operation, inputs[0].shape, kernel_norms)
                memo[key] = own * bound_of(inputs[0])
            else:
                memo[key] = _merge(operation, [bound_of(t) for t in inputs])
        return memo[key]

    return math.sqrt(sum(bound_of(t) ** 2 for t in model.outputs))


# ------------------------------------------------------------- layer table


def _input_size(layer, constraint):
    """The spatial size a convolution acts on (``H x W``, ``T``, ...), or a
    dense map's input width."""
    if constraint is not None and constraint.geometry is not None:
        geometry = constraint.geometry
        if geometry.input_size:
            return "x".join(str(d) for d in geometry.input_size)
    build = layer.get_build_config() if layer.built else None
    shape = build["input_shape"] if build else None
    if not shape:
        return "?"
    if linear_layers.is_linear(layer) and not isinstance(layer, keras.layers.Dense):
        shape = binding.operator_geometry(layer, shape).input_size
        return "x".join(str(d) for d in shape)
    return "x".join(str(d) for d in (shape[1:3] if len(shape) == 4 else shape[-1:]))


def constraint_status(lipschitz, lip_bound, distance, dist_bound):
    """``(Lipschitz holds, distance holds)``, each ``None`` where there is no
    constraint (or no ``K0``), to the documented tolerances; 1e-6 absolute
    lets ``dist = 0`` absorb rounding."""
    lip_ok = (
        None
        if lip_bound in (None, math.inf)
        else bool(lipschitz <= lip_bound * (1 + constraints.LIPSCHITZ_TOLERANCE))
    )
    dist_ok = (
        None
        if dist_bound in (None, math.inf) or distance is None
        else bool(distance <= dist_bound * (1 + constraints.DISTANCE_TOLERANCE) + 1e-6)
    )
    return lip_ok, dist_ok


def own_parameters(layer):
    """The layer's parameter count without its ``LipDist``'s state (``K0``
    and the tracked directions, which ``count_params`` includes)."""
    state = {id(v) for _, lipdist in binding.lipdists_of(layer) for v in lipdist.weights}
    return int(sum(np.prod(v.shape) for v in layer.weights if id(v) not in state))


def layer_row(layer, lipschitz=None):
    """One `layer_table` row; ``lipschitz`` (the kernel's norm, if
    already measured) spares computing it again."""
    constraint = binding.kernel_lipdist(layer)
    lip_bound, dist_bound = math.inf, math.inf
    distance = None
    build = layer.get_build_config() if layer.built else None
    shape = tuple(build["input_shape"]) if build else None
    if isinstance(layer, (capacity_layers.SimplexClassifier, capacity_layers.PoolingShortcut)):
        lip_bound = layer.lip
        dist_bound, distance = 0.0, 0.0
        lipschitz = layer.lipschitz_constant
    elif isinstance(layer, keras.layers.BatchNormalization):
        lipschitz = batch_norm_lipschitz(layer)
    else:
        if constraint is not None:
            lip_bound, dist_bound = constraint.lip, constraint.dist
            distance = binding.distance(layer)
        if lipschitz is None:
            lipschitz = (
                binding.lipschitz(layer)
                if constraint is not None
                else _kernel_lipschitz(layer, shape)
            )
    lip_ok, dist_ok = constraint_status(lipschitz, lip_bound, distance, dist_bound)
    holds = lip_ok is not False and dist_ok is not False
    strides = getattr(layer, "strides", None)
    return {
        "name": layer.name,
        "kind": type(layer).__name__,
        "input_size": _input_size(layer, constraint),
        "stride": strides[0]
        if strides
        else (2 if isinstance(layer, capacity_layers.PoolingShortcut) else None),
        "lip_constraint": lip_bound,
        "lipschitz": lipschitz,
        "dist_constraint": dist_bound,
        "distance": distance,
        "params": own_parameters(layer),
        "holds": bool(holds),
    }


MEASURED_LAYERS = (
    *linear_layers.LINEAR_LAYERS,
    keras.layers.BatchNormalization,
    capacity_layers.PoolingShortcut,
)


def layer_table(model: keras.Model) -> list[dict]:
    """One dict per linear, BatchNorm and shortcut layer of ``model``:
    ``name, kind, input_size, stride, lip_constraint, lipschitz,
    dist_constraint, distance, params, holds``.

    Constraints that are absent are ``inf``; ``distance`` is ``None`` for a
    layer without ``K0``; ``holds`` says whether both constraints hold to
    the documented tolerances.
    """
    return [
        layer_row(layer)
        for layer in binding.walk_layers(model)
        if isinstance(layer, MEASURED_LAYERS)
    ]


def _number(value, digits=4):
    if value is None:
        return "-"
    if value == math.inf:
        return "inf"
    return f"{value:.{digits}g}"


def format_table(rows: list[dict]) -> str:
    """``rows`` of `layer_table` as an aligned text table."""
    header = ("layer", "kind", "input", "stride", "lip<=", "lip", "dist<=", "dist", "params", "ok")
    lines = [header] + [
        (
            r["name"],
            r["kind"],
            r["input_size"],
            _number(r["stride"]),
            _number(r["lip_constraint"]),
            _number(r["lipschitz"]),
            _number(r["dist_constraint"]),
            _number(r["distance"]),
            f"{r['params']:,}",
            "yes" if r["holds"] else "NO",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    )


# ------------------------------------------------------ margins, complexity


def margins_of_scores(scores, labels):
    """``v_y - max_{i != y} v_i`` for a batch of scores ``(batch, classes)``
    and integer labels, as float64 numpy."""
    scores = np.array(ops.convert_to_numpy(scores), np.float64)
    labels = np.asarray(ops.convert_to_numpy(labels)).astype(np.int64).reshape(-1)
    if scores.ndim != 2 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"margins: expected scores (batch, classes) and one label per "
            f"example, got scores {scores.shape} and labels {labels.shape}."
        )
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"margins: labels must lie in [0, {scores.shape[1]}).")
    rows = np.arange(len(labels))
    own = scores[rows, labels]
    scores[rows, labels] = -np.inf
    return own - scores.max(axis=1)


def margins(
    model: keras.Model,
    data: np.ndarray | Iterable,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """``v_y - max_{i != y} v_i`` for every example, as float64 numpy.

    ``data`` is an array (with integer ``labels``) or a ``tf.data.Dataset``
    of ``(inputs, labels)`` batches; it is streamed batch by batch, with the
    model in inference mode.
    """
    if labels is not None:
        data = [
            (data[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(data), batch_size)
        ]
    result = [margins_of_scores(model(inputs, training=False), targets) for inputs, targets in data]
    return np.concatenate(result) if result else np.zeros(0)


def spectral_complexity(model: keras.Model, rows: list[dict] | None = None) -> float:
    """``L * (sum_i (b_i / s_i)^(2/3))^(3/2)`` (Bartlett et al. 2017).

    ``s_i`` is layer ``i``'s Lipschitz constant and ``b_i`` its (2,1)
    distance to ``K0``, over the layers with ``K0`` (constrained and simplex
    layers); ``L`` is `network_lipschitz`, the product of the ``s_i``
    for a chain (the fixed layers' constants included). ``rows`` reuses a
    `layer_table`.
    """
    rows = layer_table(model) if rows is None else rows
    weighted = [r for r in rows if r["distance"] is not None and r["params"] > 0]
    if not weighted:
        raise ValueError(
            "spectral_complexity needs layers with a bound LipDist (their K0 "
            "gives the distances); call keras_capacity.bind(model)."
        )
    total = sum((r["distance"] / r["lipschitz"]) ** (2 / 3) for r in weighted)
    return network_lipschitz(model, kernel_norms(rows)) * total**1.5
