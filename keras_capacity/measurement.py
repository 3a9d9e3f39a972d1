"""The capacity record of any trained Keras model: `measure` (SPEC §10).

What the report and the bounds are made of, for a model this project may
not have trained: per linear layer (``Dense`` and every Keras convolution:
1-D, 2-D, 3-D, grouped, depthwise, separable, transposed; see
`keras_capacity.linear_layers`) the exact Lipschitz constant of its
map on its actual input (any padding, strides, dilation) and its (2,1)
distance to the map of the *initial* weights, over the input axis each
kind documents; the
network's Lipschitz bound along its graph; the margins, the twelve
complexity bounds and the bounds on the test error; certified accuracy.

Initial weights come from ``init`` (a model, a ``.keras`` file or a
weights file, layers matched by name and kernel shape) or from a bound
`LipDist`'s ``K0``; without either a distance is
*unknown* (``None``), never 0, and the bounds made of distances say so.

Whether the twelve bounds apply, and how BatchNorm enters them, is
`keras_capacity.chain`'s rule.
"""

import dataclasses
import math
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_capacity import binding, bounds, exact_norms, linear_layers, network, operators
from keras_capacity import layers as capacity_layers
from keras_capacity.chain import KERNEL_LAYERS, chain_of, folded_kernels

# Certified radii tabulated by default (l2, in input units).
RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)


# ------------------------------------------------------ initial weights


def _load_init(model, init):
    """``init`` as a model: itself, a ``.keras`` file, or a weights file
    loaded into a copy of ``model``'s architecture."""
    if isinstance(init, keras.Model):
        return init
    path = os.fspath(init)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"init: {path} does not exist.")
    try:
        if path.endswith(".keras"):
            return keras.models.load_model(path, compile=False)
        copy = keras.models.clone_model(model)
        with warnings.catch_warnings():  # the trained model's optimizer is not needed
            warnings.simplefilter("ignore", UserWarning)
            copy.load_weights(path)
        return copy
    except Exception as error:  # any unreadable or foreign file
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"init: {path} cannot be read as a Keras model or weights file "
            f"({type(error).__name__}: {first})."
        ) from None


def _numpy(variable):
    return np.asarray(ops.convert_to_numpy(variable), np.float64)


def _initial_layers(model, init):
    """``{layer name: the init model's layer}`` for every kernel and
    BatchNorm layer, matched by name and kernel shapes."""
    reference = _load_init(model, init)
    theirs = {layer.name: layer for layer in binding.walk_layers(reference)}
    matched = {}
    for layer in binding.walk_layers(model):
        if not isinstance(layer, (*KERNEL_LAYERS, keras.layers.BatchNormalization)):
            continue
        other = theirs.get(layer.name)
        if other is None:
            raise ValueError(f"init: the initial model has no layer named {layer.name!r}.")
        for name in ("kernel", "depthwise_kernel", "pointwise_kernel", "moving_variance"):
            if hasattr(layer, name):
                ours, initial = tuple(getattr(layer, name).shape), getattr(other, name, None)
                shape = None if initial is None else tuple(initial.shape)
                if shape != ours:
                    raise ValueError(
                        f"init: layer {layer.name!r} has {name} shape {ours} in the model "
                        f"and {shape} in the initial model."
                    )
        matched[layer.name] = other
    return matched


def _initial_kernel(layer, initial_layers):
    """The layer's initial map kernel (float64), or ``None`` where unknown."""
    if initial_layers is not None:
        return linear_layers.map_kernel(initial_layers[layer.name])
    if isinstance(layer, capacity_layers.SimplexClassifier):
        return _numpy(layer.kernel)  # fixed, never trained
    constraint = binding.kernel_lipdist(layer)
    return None if constraint is None else constraint.initial_map_kernel()


# ------------------------------------------------------- per-layer terms


def _geometry(layer):
    constraint = binding.kernel_lipdist(layer)
    if constraint is not None:
        return constraint.geometry
    return binding.operator_geometry(layer, layer.get_build_config()["input_shape"])


def _as_conv(kernel):
    return kernel.reshape(1, 1, *kernel.shape) if kernel.ndim == 2 else kernel


def _layer_terms(layer, kernel, initial):
    """The per-layer fields of `bounds.Quantities` (distances
    ``None`` when ``initial`` is), from the layer's map kernel.

    A grouped (or depthwise) 2-D kernel ``(kh, kw, in / groups, out)``
    stands for the plain convolution whose kernel holds each group's block
    and zeros elsewhere (`keras_capacity.chain`): its norms and
    distances are the block's (the zeros add nothing), its ``in_channels``
    and ``params`` those of the plain convolution. A layer the bounds do
    not describe (`keras_capacity.linear_layers.bounds_reason`) gets
    its Lipschitz constant only."""
    geometry = _geometry(layer)
    terms = {"lipschitz": exact_norms.spectral_norm(kernel, geometry)}
    if linear_layers.bounds_reason(layer) is not None:
        return terms
    dense = geometry.kind == operators.DENSE
    kernel4 = _as_conv(kernel)
    filters = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (kh kw in, out)
    terms.update(
        norm_fro=float(np.linalg.norm(kernel4)),
        norm_1inf=float(np.abs(filters(kernel4)).sum(axis=0).max()),
        params=int(kernel4.size) * geometry.groups,
        input_sizes=1 if dense else int(geometry.input_size[1]),
        kernel_sizes=1 if dense else int(kernel4.shape[1]),
        strides=1 if dense else int(geometry.strides[1]),
        in_channels=int(kernel4.shape[2]) * geometry.groups,
        filter_norm_max=float(np.linalg.norm(filters(kernel4), axis=0).max()),
    )
    if initial is None:
        terms.update(dist21=None, filter_dist21=None, dist_fro=None, dist_1inf=None)
    else:
        delta = kernel4 - _as_conv(initial)
        terms.update(
            dist21=float(np.linalg.norm(delta, axis=2).sum()),
            filter_dist21=float(np.linalg.norm(filters(delta), axis=0).sum()),
            dist_fro=float(np.linalg.norm(delta)),
            dist_1inf=float(np.abs(filters(delta)).sum(axis=0).max()),
        )
    return terms


def _patch_norm_squares(geometry, kernel_size, inputs):
    """The squared l2 norm of every input patch a layer of this geometry
    sees (all input channels), by one convolution of the squared input with
    a ones kernel in the layer's own geometry: its padding (zeros add
    nothing), strides and dilation (float32 sums: relative error ~1e-7, far
    below what the bounds resolve). ``geometry`` ``None``: a ``Dense``
    layer, whose one patch is the whole input."""
    x = ops.square(ops.cast(inputs, "float32"))
    if geometry is None:
        return ops.sum(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)
    ones = ops.ones((*kernel_size, x.shape[-1], 1), "float32")
    return operators.apply_operator(ones, x, geometry)


class _LargestPatchNorm(keras.layers.Layer):
    """Per example, the largest squared patch norm ``layer`` sees: computed
    inside the compiled probe, so only one number per example leaves it.
    The layer's geometry is read here, outside the trace (reading whether
    its constraint is bound needs a concrete value)."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        dense = isinstance(layer, keras.layers.Dense)
        self.geometry = None if dense else dataclasses.replace(_geometry(layer), groups=1)
        self.kernel_size = None if dense else tuple(layer.kernel_size)

    def call(self, inputs):
        squares = _patch_norm_squares(self.geometry, self.kernel_size, inputs)
        return ops.max(ops.reshape(squares, (ops.shape(squares)[0], -1)), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],)


# ------------------------------------------------------------- the data


def batches(data, batch_size=256):
    """``(inputs, labels)`` batches from ``(x, y)`` arrays or a dataset of
    batches (a ``tf.data.Dataset`` or any iterable of pairs)."""
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "shape"):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels.")
        return [
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)
        ]
    if isinstance(data, (list, tuple)) and not data:
        return []
    return data


def _check_batch(model, inputs, labels, num_classes, what):
    expected = tuple(model.inputs[0].shape[1:])
    shape = tuple(np.shape(inputs))[1:]
    fits = len(shape) == len(expected) and all(
        e is None or e == s for e, s in zip(expected, shape, strict=True)
    )
    if not fits:
        raise ValueError(
            f"{what}: inputs of shape {shape} per example, but the model takes {expected}."
        )
    labels = np.asarray(labels).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what}: labels must lie in [0, {num_classes}) for {num_classes} classes; "
            f"found {labels.min()} ... {labels.max()}."
        )


@dataclasses.dataclass
class _Pass:
    """What one streamed pass over the training data collects."""

    n: int = 0
    square_sum: float = 0.0
    max_abs: float = 0.0
    coordinate_squares: np.ndarray = None
    patch: np.ndarray = None
    margins: list = dataclasses.field(default_factory=list)


def _stream(model, chain_inputs, data, num_classes, batch_size, what, layers):
    """Margins and (for ``chain_inputs``) the data and patch terms, in
    one compiled forward pass per batch."""
    patches = [_LargestPatchNorm(layer)(x) for layer, x in zip(layers, chain_inputs, strict=True)]
    probes = keras.Model(model.inputs[0], [*chain_inputs[:1], *patches, model.outputs[0]])
    found = _Pass(patch=np.zeros(len(layers)))
    for inputs, labels in batches(data, batch_size):
        inputs, labels = ops.convert_to_numpy(inputs), ops.convert_to_numpy(labels)
        _check_batch(model, inputs, labels, num_classes, what)
        outputs = probes.predict_on_batch(inputs.astype(np.float32))  # compiled, inference
        *measured, scores = outputs if chain_inputs else [outputs]
        found.margins.append(network.margins_of_scores(scores, labels))
        found.n += len(inputs)
        if not layers:
            continue
        first = np.asarray(measured[0], np.float64)
        flat = first.reshape(len(first), -1)
        found.square_sum += float(np.sum(flat**2))
        found.max_abs = max(found.max_abs, float(np.abs(flat).max()))
        squares = np.sum(flat**2, axis=0)
        found.coordinate_squares = (
            squares if found.coordinate_squares is None else found.coordinate_squares + squares
        )
        largest = np.asarray([np.max(values) for values in measured[1:]], np.float64)
        found.patch = np.maximum(found.patch, largest)
    if found.n == 0:
        raise ValueError(f"{what}: the data is empty.")
    return found


# ---------------------------------------------------------------- record


@dataclasses.dataclass(frozen=True)
class CapacityRecord:
    """What `measure` returns.

    ``layers``: one dict per kernel, BatchNorm and shortcut layer (as
    `keras_capacity.layer_table`, with ``distance`` ``None`` where
    unknown and ``folded``, the BatchNorm folded into a kernel);
    ``network_lipschitz``; ``bounds_reason`` (why none of the twelve bounds
    apply: the model is not a chain, or its training inputs are all zero;
    ``None`` when they apply); ``quantities`` (a `bounds.Quantities`, or
    ``None`` when they do not apply); ``test_error_bounds`` (``{name:
    ErrorBound or None}``); ``not_applicable`` (``{bound name: reason}``);
    ``train_margins``, ``test_margins`` (float64 arrays; the latter empty
    without test data), ``train_accuracy``, ``test_accuracy`` (``None``
    without test data); ``certified_accuracy`` (``{radius: fraction of test
    points certified}``); ``notes`` (what was folded, which layers have
    biases).
    """

    layers: list
    network_lipschitz: float
    bounds_reason: str | None
    quantities: bounds.Quantities | None
    test_error_bounds: dict
    not_applicable: dict
    train_margins: np.ndarray
    test_margins: np.ndarray
    train_accuracy: float
    test_accuracy: float | None
    certified_accuracy: dict
    notes: tuple

    def complexity_bounds(self, gamma: float) -> dict:
        """``{name: R(gamma) or None}`` (``None``: not applicable)."""
        values = {}
        for name, bound in bounds.BOUNDS.items():
            if self.quantities is None or name in self.not_applicable:
                values[name] = None
            else:
                values[name] = float(bound(self.quantities, gamma))
        return values

    def test_error_bounds_json(self) -> dict:
        """``{name: ErrorBound.as_dict()}``; a bound that does not apply is
        ``{"name", "value": None, "not_applicable": reason}``."""
        return {
            name: (
                {"name": name, "value": None, "not_applicable": self.not_applicable[name]}
                if bound is None
                else bound.as_dict()
            )
            for name, bound in self.test_error_bounds.items()
        }

    def as_dict(self) -> dict:
        """The record as JSON-ready values (``inf`` as ``None``)."""
        q = self.quantities
        return {
            "layers": [{k: _json(v) for k, v in row.items()} for row in self.layers],
            "network_lipschitz": _json(self.network_lipschitz),
            "bounds_apply": self.bounds_reason is None,
            "bounds_reason": self.bounds_reason,
            "test_error_bounds": self.test_error_bounds_json(),
            "not_applicable": dict(self.not_applicable),
            "quantities": None
            if q is None
            else {k: v for k, v in dataclasses.asdict(q).items() if k != "train_margins"},
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "certified_accuracy": {str(k): v for k, v in self.certified_accuracy.items()},
            "notes": list(self.notes),
        }


def _json(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def certified_accuracy(margins, lipschitz, radii=RADII):
    """``{radius: fraction of points whose certified radius m/(sqrt(2) L)
    is at least it}``; a misclassified point (``m <= 0``) is never certified."""
    margins = np.asarray(margins, np.float64)
    radius = np.where(margins > 0, margins / (math.sqrt(2) * lipschitz), -1.0)
    return {float(r): float(np.mean(radius >= r)) if len(margins) else 0.0 for r in radii}


def _row(layer, chain, own):
    """A layer-table row; ``own`` ``{kernel name: (its Lipschitz constant,
    its distance or None)}``."""
    lipschitz, distance = own.get(layer.name, (None, None))
    row = network.layer_row(layer, lipschitz)
    if layer.name in own:
        row["distance"] = distance
        statuses = network.constraint_status(
            row["lipschitz"], row["lip_constraint"], distance, row["dist_constraint"]
        )
        row["holds"] = all(ok is not False for ok in statuses)
    folded_into = [name for name, (bn, _) in chain.folded.items() if bn is layer]
    if layer.name in chain.folded:
        row["folded"] = chain.folded[layer.name][0].name
    else:
        row["folded"] = f"into {folded_into[0]}" if folded_into else None
    return row


def _notes(model, chain):
    notes = [
        f"BatchNormalization {bn.name!r} folded into {name!r} ({side} it): its inference-mode "
        "scale is part of that kernel's Lipschitz constant and distance"
        for name, (bn, side) in chain.folded.items()
    ]
    biased = [
        layer.name
        for layer in binding.walk_layers(model)
        if isinstance(layer, KERNEL_LAYERS) and getattr(layer, "use_bias", False)
    ]
    if biased or chain.folded:
        notes.append(
            "biases and BatchNorm shifts are not capacity terms (as in the paper, whose "
            f"networks have none); layers with a bias: {biased or 'none'}"
        )
    return tuple(notes)


def _check_model(model):
    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or hasattr(model, "operations")
    ):
        raise ValueError(
            f"measure needs a Sequential or functional Keras model, got {type(model).__name__}."
        )
    if not model.built or not model.outputs:
        raise ValueError(f"model {model.name!r} is not built: give it a keras.Input.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            f"measure needs a model with one input and one output (class scores); "
            f"{model.name!r} has {len(model.inputs)} and {len(model.outputs)}."
        )
    if not any(isinstance(layer, KERNEL_LAYERS) for layer in binding.walk_layers(model)):
        raise ValueError(
            f"model {model.name!r} has no Dense or Conv2D layer (nor another convolution) "
            "to measure."
        )


def measure(
    model: keras.Model,
    train,
    test=None,
    *,
    init=None,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> CapacityRecord:
    """The capacity record of a trained ``Sequential`` or functional model.

    Args:
        model: the trained model; its kernels in ``Dense`` layers and
            Keras's convolutions (1-D, 2-D, 3-D, grouped, depthwise,
            separable, transposed; any padding, strides, dilation), with or
            without `LipDist`. Its output are the
            class scores.
        train: the training data, as the model sees it: ``(x, y)`` arrays
            (integer labels) or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        test: the test data, the same way (optional: test accuracy and
            certified accuracy need it).
        init: the initial weights: a model of the same architecture, a
            ``.keras`` file or a weights file; layers are matched by name
            and kernel shape. Default: a bound ``LipDist``'s ``K0``; a layer
            without either has an unknown distance (``None``).
        num_classes: default the model's output width.
        batch_size: for arrays.

    Returns:
        A `CapacityRecord`. A layer without a known Lipschitz
        constant, a mismatched ``init``, inputs of the wrong shape or labels
        out of range are a ``ValueError`` naming them.
    """
    _check_model(model)
    num_classes = int(num_classes or model.outputs[0].shape[-1])
    initial_layers = None if init is None else _initial_layers(model, init)
    chain = chain_of(model)
    terms, own = _kernel_terms(model, chain, initial_layers)
    kernel_norms = {name: values["lipschitz"] for name, values in terms.items()}
    kernel_norms.update({bn.name: 1.0 for bn, _ in chain.folded.values()})  # in the kernel's
    lipschitz = network.network_lipschitz(model, kernel_norms)
    applies = chain.reason is None
    units = [_unit_input(layer, chain) for layer in chain.kernels] if applies else []
    chain_layers = list(chain.kernels) if applies else []
    found = _stream(model, units, train, num_classes, batch_size, "training data", chain_layers)
    train_margins = np.concatenate(found.margins)
    test_margins = np.zeros(0)
    if test is not None:
        test_margins = np.concatenate(
            _stream(model, [], test, num_classes, batch_size, "test data", []).margins
        )
    reason = f"not a chain of convolutions: {chain.reason}" if not applies else None
    if applies and found.square_sum == 0:
        reason = "the training inputs are all zero (||X|| = 0), so the bounds say nothing"
    quantities = None
    if reason is None:
        quantities = _quantities(chain, terms, found, num_classes, train_margins)
    test_error, not_applicable = _error_bounds(quantities, reason)
    rows = [
        _row(layer, chain, own)
        for layer in binding.walk_layers(model)
        if isinstance(layer, network.MEASURED_LAYERS)
    ]
    return CapacityRecord(
        layers=rows,
        network_lipschitz=lipschitz,
        bounds_reason=reason,
        quantities=quantities,
        test_error_bounds=test_error,
        not_applicable=not_applicable,
        train_margins=train_margins,
        test_margins=test_margins,
        train_accuracy=float(np.mean(train_margins > 0)),
        test_accuracy=float(np.mean(test_margins > 0)) if len(test_margins) else None,
        certified_accuracy=certified_accuracy(test_margins, lipschitz),
        notes=_notes(model, chain),
    )


def _kernel_terms(model, chain, initial_layers):
    """``({kernel name: its Quantities fields}, {kernel name: (its own
    Lipschitz constant, its own distance or None)})``; the first with the
    BatchNorm folded in, the second as `keras_capacity.lipschitz` and
    `keras_capacity.distance` give them."""
    terms, own = {}, {}
    for layer in binding.walk_layers(model):
        if not isinstance(layer, KERNEL_LAYERS):
            continue
        kernel, initial = linear_layers.map_kernel(layer), _initial_kernel(layer, initial_layers)
        distance = None
        if initial is not None:
            distance = linear_layers.distance21(kernel, initial, _geometry(layer))
        folded = folded_kernels(layer, kernel, initial, chain, initial_layers)
        terms[layer.name] = _layer_terms(layer, *folded)
        norm = terms[layer.name]["lipschitz"]
        own[layer.name] = (
            _own_norm(layer, kernel) if layer.name in chain.folded else norm,
            distance,
        )
    return terms, own


def _unit_input(layer, chain):
    """The input of the map a chain layer stands for (its BatchNorm's, when
    folded in before it)."""
    batch_norm, side = chain.folded.get(layer.name, (None, None))
    return batch_norm.input if side == "before" else layer.input


def _quantities(chain, terms, found, num_classes, train_margins):
    per_layer = {}
    for key in terms[chain.kernels[0].name]:
        values = [terms[layer.name][key] for layer in chain.kernels]
        per_layer[key] = None if any(v is None for v in values) else tuple(values)
    return bounds.Quantities(
        n=found.n,
        num_classes=num_classes,
        data_norm=math.sqrt(found.square_sum),
        data_max_abs=found.max_abs,
        data_max_coordinate_norm=float(np.sqrt(found.coordinate_squares.max())),
        margin=float(train_margins.min()),
        train_margins=tuple(train_margins.tolist()),
        patch_norms=tuple(float(np.sqrt(p)) for p in found.patch),
        **per_layer,
    )


def _error_bounds(quantities, reason):
    """``({name: ErrorBound or None}, {name: why not applicable})``; without
    ``quantities`` every bound is not applicable, for ``reason``."""
    test_error, not_applicable = {}, {}
    for name in bounds.BOUNDS:
        test_error[name] = None
        if quantities is None:
            not_applicable[name] = reason
            continue
        try:
            test_error[name] = bounds.error_bound(quantities, name)
        except bounds.NotApplicable as error:
            not_applicable[name] = str(error)
    return test_error, not_applicable


def _own_norm(layer, kernel):
    """The Lipschitz constant of the layer's kernel alone (BatchNorm not
    folded in), as `keras_capacity.lipschitz` gives it."""
    return exact_norms.spectral_norm(kernel, _geometry(layer))
