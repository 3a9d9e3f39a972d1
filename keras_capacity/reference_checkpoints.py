"""The PyTorch reference's checkpoints as Keras models (``from_reference``).

The reference's ``train.py`` (Graf et al., ``--save_model``) writes
``torch.save(model.state_dict(), "model_<epoch>.pt")``: ``model_0.pt`` after
the first forward pass, then every tenth epoch and at the end. Such a
state_dict holds, for every constrained layer, ``<layer>.weight`` and the
``<layer>.init_weight`` buffer: the kernel at initialization after its
Lipschitz rescaling, which is the ``K0`` the reference measures distances
from. Kernels of layers on 2x2 and 1x1 maps are stored as the reference
left them at its first forward pass (cropped to 2x2, summed to 1x1).

`from_reference` builds our model of the same architecture
(`keras_capacity.models`) with the reference's weights and ``K0``, and
returns it bound. The files are read without PyTorch, by
`keras_capacity.torch_state_dict.load_torch_state_dict`.
"""

import warnings
from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from keras_capacity import binding, constraint_values, constraints, models
from keras_capacity import layers as capacity_layers
from keras_capacity.torch_state_dict import state_dict_arrays

# ----------------------------------------------------------- architectures

CONV, DENSE, SIMPLEX, BATCH_NORM = "conv", "dense", "simplex", "batch_norm"
# Keras BatchNormalization parameters from PyTorch's BatchNorm2d buffers.
_BATCH_NORM_VARIABLES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# PyTorch's BatchNorm2d defaults (Keras momentum is 1 - PyTorch's).
_TORCH_BN_EPSILON, _TORCH_BN_MOMENTUM = 1e-5, 0.9


@dataclass(frozen=True)
class _Entry:
    """One layer of our model and the state_dict prefix of its weights."""

    layer: str
    prefix: str
    kind: str


def _convnet_entries(depth, simplex, trainable_head):
    entries = []
    for block in range(1, 6):
        for position in range(1, depth + 1):
            index = 0 if position == 1 else 3 + 2 * (position - 2)  # [conv, pool, relu, conv, relu]
            entries.append(
                _Entry(f"block{block}_conv{position}", f"model.{block - 1}.{index}", CONV)
            )
    if not simplex:
        entries.append(_Entry("classifier", "model.5.0", CONV))
    else:
        entries.append(_Entry("classifier", "model.5.1", DENSE if trainable_head else SIMPLEX))
    return entries


def _resnet_entries(batch_norm, trainable_head):
    entries = [_Entry("conv1", "conv1", CONV)]
    if batch_norm:
        entries.append(_Entry("bn1", "bn1", BATCH_NORM))
    for stage in range(1, 5):
        for block in (1, 2):
            ours, theirs = f"stage{stage}_block{block}", f"layer{stage}.{block - 1}"
            for conv in (1, 2):
                if batch_norm:
                    entries.append(_Entry(f"{ours}_bn{conv}", f"{theirs}.bn{conv}", BATCH_NORM))
                entries.append(_Entry(f"{ours}_conv{conv}", f"{theirs}.conv{conv}", CONV))
            if batch_norm and stage > 1 and block == 1:
                entries.append(_Entry(f"{ours}_shortcut_bn", f"{theirs}.downsample.1", BATCH_NORM))
    entries.append(_Entry("classifier", "fc", DENSE if trainable_head else SIMPLEX))
    return entries


ARCHITECTURES = ("simple_convnet6", "simple_convnet11", "preact_resnet18")
# The reference's --arch name for the ResNet.
_ALIASES = {"no_stride_preactresnet18": "preact_resnet18"}


def _required(state, key, arch):
    if key not in state:
        first = ", ".join(list(state)[:4])
        raise ValueError(
            f"The checkpoint has no {key!r}, which a {arch} state_dict has (its first "
            f"keys: {first}); is `arch` right?"
        )
    return state[key]


def _given_or_read(name, given, read, source):
    """``read`` (from the checkpoint, as ``source`` says), which a given
    value must equal."""
    if given is not None and given != read:
        raise ValueError(f"{name}={given!r}, but {source}.")
    return read


def _shape_of(array, key):
    return f"the checkpoint's {key!r} has shape {tuple(array.shape)}"


def _presence(state, key):
    return f"the checkpoint {'has' if key in state else 'has no'} {key!r}"


# ----------------------------------------------------------- the model


def _reference_aligned(model, constrained):
    """A copy of ``model`` whose max-pools use PyTorch's windows and whose
    BatchNorms use PyTorch's epsilon and momentum; without its LipDists
    unless ``constrained``."""

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.MaxPooling2D):
            return capacity_layers.PaddedMaxPooling2D(3, 2, 1, name=layer.name)
        if isinstance(layer, keras.layers.BatchNormalization):
            config.update(epsilon=_TORCH_BN_EPSILON, momentum=_TORCH_BN_MOMENTUM)
        if not constrained and "kernel_constraint" in config:
            config["kernel_constraint"] = None
        return type(layer).from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def _torch_shape(layer, kind):
    """The PyTorch shape of ``layer``'s kernel: conv ``(out, in, kh, kw)``,
    linear ``(out, in)``."""
    shape = tuple(layer.kernel.shape)
    if kind == CONV:
        return (shape[3], shape[2], shape[0], shape[1])
    return (shape[1], shape[0])


def _check_shape(key, array, expected, layer_name, where="the checkpoint"):
    if tuple(array.shape) != tuple(expected):
        hint = ""
        if len(expected) == 4 and tuple(array.shape[:2]) == tuple(expected[:2]):
            hint = " (deep kernels are as large as their input maps: check input_shape)"
        raise ValueError(
            f"{key!r} has shape {tuple(array.shape)} in {where}, but layer "
            f"{layer_name!r} needs {tuple(expected)}{hint}."
        )


def _keras_kernel(array, kind):
    array = np.asarray(array, np.float32)
    if kind == CONV:
        return capacity_layers.kernel_from_reference(array).astype(np.float32)
    return np.ascontiguousarray(array.T)


def _check_simplex(layer, key):
    """The checkpoint's prototypes stand in for our closed-form simplex; the
    layer's declared Lipschitz constant must be theirs."""
    kernel = np.asarray(ops.convert_to_numpy(layer.kernel), np.float64)
    measured, declared = float(np.linalg.norm(kernel, 2)), layer.lipschitz_constant
    if abs(measured - declared) > constraints.LIPSCHITZ_TOLERANCE * declared:
        raise ValueError(
            f"The checkpoint's simplex classifier {key!r} has spectral norm {measured:.6g}, "
            f"not the simplex's {declared:.6g} for lip={layer.lip}: pass the run's --lip, or "
            "a classifier dist != 0 to load it as a Dense layer."
        )


def _initial_kernels(entries, state, init_state):
    """``{layer name: (key, source, K0 as a PyTorch array)}`` for every
    trainable kernel: the ``init`` state_dict's weights, else the
    checkpoint's ``init_weight`` buffers."""
    kernels = {}
    for entry in entries:
        if entry.kind not in (CONV, DENSE):
            continue
        recorded = state.get(f"{entry.prefix}.init_weight")
        if init_state is None:
            if recorded is None:
                raise ValueError(
                    f"The checkpoint has no {entry.prefix + '.init_weight'!r} and no `init` "
                    "was given, so the distance to initialization is unknown: pass "
                    "init='model_0.pt' of the same run, or bind=False for the model alone."
                )
            kernels[entry.layer] = (f"{entry.prefix}.init_weight", "the checkpoint", recorded)
            continue
        key = f"{entry.prefix}.weight"
        if key not in init_state:
            raise ValueError(f"The init state_dict has no {key!r}.")
        initial = init_state[key]
        if recorded is not None:
            _check_shape(key, initial, recorded.shape, entry.layer, "init")
            difference = float(np.max(np.abs(initial - recorded), initial=0.0))
            if difference > 1e-6 * float(np.max(np.abs(recorded), initial=1e-30)):
                raise ValueError(
                    f"`init` is not this run's initialization: its {key!r} differs from the "
                    f"checkpoint's {entry.prefix + '.init_weight'!r} by up to {difference:.3g}."
                )
        kernels[entry.layer] = (key, "init", initial)
    return kernels


def _bind_to_reference_init(model, entries, state, init_state):
    """Binds ``model`` with ``K0`` = the reference's initial kernels,
    verbatim; the layers' kernels stay the checkpoint's."""
    found = _initial_kernels(entries, state, init_state)
    initial, trained = {}, {}
    for entry in entries:
        if entry.layer in found:
            key, where, array = found[entry.layer]
            layer = model.get_layer(entry.layer)
            _check_shape(key, array, _torch_shape(layer, entry.kind), entry.layer, where)
            initial[entry.layer] = _keras_kernel(array, entry.kind)
            trained[entry.layer] = ops.convert_to_numpy(layer.kernel)
            layer.kernel.assign(initial[entry.layer])
    for layer, constraint in binding.bind(model):
        k0 = initial[layer.name]
        stored = np.asarray(ops.convert_to_numpy(constraint.initial_kernel))
        if not np.array_equal(stored, k0):  # bind scaled it down to `lip`
            ratio = float(np.linalg.norm(k0) / np.linalg.norm(stored))
            if ratio > 1 + constraints.LIPSCHITZ_TOLERANCE:
                warnings.warn(
                    f"{layer.name!r}: the reference's K0 has Lipschitz constant "
                    f"{ratio * constraint.lip:.6g} > lip={constraint.lip:.6g} (the reference's "
                    "power iteration estimated it lower, or lip is not the run's --lip); "
                    "distances are measured from this K0 as it is.",
                    stacklevel=3,
                )
            constraint.initial_kernel.assign(k0)
        layer.kernel.assign(trained[layer.name])


def from_reference(
    checkpoint,
    arch: str,
    *,
    init=None,
    num_classes: int | None = None,
    n_channels: int | None = None,
    strides: bool = True,
    simplex: bool | None = None,
    batch_norm: bool | None = None,
    lip=(-1, -1, -1, -1),
    dist=(-1, -1, -1, -1),
    mode: str = "radial",
    n_iter: int = 1,
    every: int = 1,
    input_shape: tuple | None = None,
    bind: bool = True,
) -> keras.Model:
    """Our model of the reference's architecture with a reference
    checkpoint's weights, bound to the reference's ``K0``.

    >>> model = kc.from_reference("run/model_200.pt", "preact_resnet18",
    ...                           init="run/model_0.pt", dist=(90, 90, 90, 0))

    The network is `keras_capacity.models`' ``arch`` with the
    reference's max-pool windows (`PaddedMaxPooling2D`)
    and BatchNorm epsilon: its logits are the reference's. Kernels are
    converted by `kernel_from_reference`; the
    simplex classifier keeps the checkpoint's prototypes (their spectral norm
    must be the simplex's).

    ``K0`` is the reference's initial kernel, verbatim: the weights of
    ``init`` (``model_0.pt`` of the same run), else the checkpoint's own
    ``init_weight`` buffers, which the reference's constrained layers save
    with every checkpoint. With neither the distance is unknown, and binding
    is an error; ``bind=False`` returns the network alone (no ``LipDist``,
    so no distance can be read from a ``K0`` that is really the trained
    kernel) — ``from_reference("model_0.pt", ..., bind=False)`` is the
    reference's initial network as a Keras model.

    Args:
        checkpoint: a ``model_<epoch>.pt`` path, or a loaded state_dict
            (names to torch tensors or numpy arrays).
        arch: ``"simple_convnet6"``, ``"simple_convnet11"`` or
            ``"preact_resnet18"`` (also the reference's ``"no_stride_preactresnet18"``).
        init: the same run's ``model_0.pt`` (path or state_dict), optional.
        num_classes, n_channels, simplex, batch_norm: read from the
            checkpoint when ``None``; a given value must agree with it.
        strides: the convnets' stride-2 convs (the reference's default;
            the kernels do not tell).
        lip, dist: the run's ``--lip``/``--dist``: the bounds for further
            training, and ``dist[3] == 0`` means the fixed simplex classifier.
        mode, n_iter, every, input_shape: as in `keras_capacity.models`
            (``input_shape`` defaults to 32x32 with the checkpoint's channels).
        bind: bind the ``LipDist`` constraints to ``K0`` (default), or
            return the network without constraints.

    Raises:
        FileNotFoundError: a checkpoint or init file is missing.
        ValueError: a damaged file, an unknown ``arch``, keys missing from or
            unknown to the architecture, shapes that differ, an ``init``
            from another run, or no ``K0`` to bind to.
    """
    arch = _ALIASES.get(arch, arch)
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Unknown arch {arch!r}; expected one of {ARCHITECTURES + tuple(_ALIASES)}."
        )
    if init is not None and not bind:
        raise ValueError("`init` supplies K0 for binding; with bind=False leave it out.")
    state = state_dict_arrays(checkpoint, "checkpoint")
    init_state = None if init is None else state_dict_arrays(init, "init")
    model, entries = _build(
        arch, state, num_classes, n_channels, strides, simplex, batch_norm, lip, dist,
        mode, n_iter, every, input_shape, bind,
    )  # fmt: skip
    used = _load_weights(model, entries, state)
    unexpected = [key for key in state if key not in used]
    if unexpected:
        raise ValueError(
            f"The checkpoint has {len(unexpected)} key(s) that {arch} does not: "
            f"{', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''}."
        )
    if bind:
        _bind_to_reference_init(model, entries, state, init_state)
    return model


def _build(
    arch, state, num_classes, n_channels, strides, simplex, batch_norm, lip, dist,
    mode, n_iter, every, input_shape, constrained,
):  # fmt: skip
    """Our model for ``state`` and its layer-to-key entries."""
    options = dict(lip=lip, dist=dist, mode=mode, n_iter=n_iter, every=every)
    classifier_dist = constraint_values.constraint_list("dist", dist, constraint_values.DISTANCE)[
        models.CLASSIFIER
    ]
    if arch == "preact_resnet18":
        first = _required(state, "conv1.weight", arch)
        head = "fc"
        head_weight = _required(state, "fc.weight", arch)
        num_classes = _given_or_read(
            "num_classes", num_classes, head_weight.shape[0], _shape_of(head_weight, "fc.weight")
        )
        batch_norm = _given_or_read(
            "batch_norm", batch_norm, "bn1.weight" in state, _presence(state, "bn1.weight")
        )
    else:
        first = _required(state, "model.0.0.weight", arch)
        n_channels = _given_or_read(
            "n_channels", n_channels, first.shape[0], _shape_of(first, "model.0.0.weight")
        )
        simplex = _given_or_read(
            "simplex", simplex, "model.5.1.weight" in state, _presence(state, "model.5.1.weight")
        )
        head = "model.5.1" if simplex else "model.5.0"
        head_weight = _required(state, f"{head}.weight", arch)
        num_classes = _given_or_read(
            "num_classes",
            num_classes,
            head_weight.shape[0],
            _shape_of(head_weight, f"{head}.weight"),
        )
    trainable_head = classifier_dist != 0
    if arch == "preact_resnet18" or simplex:
        _check_head(state, head, trainable_head)
    if input_shape is None:
        input_shape = (32, 32, first.shape[1])
    if arch == "preact_resnet18":
        model = models.preact_resnet18(
            num_classes, batch_norm=batch_norm, input_shape=input_shape, **options
        )
        entries = _resnet_entries(batch_norm, trainable_head)
    else:
        depth = 1 if arch == "simple_convnet6" else 2
        model = models.ARCHITECTURES[arch](
            num_classes,
            n_channels,
            strides=strides,
            simplex=simplex,
            input_shape=input_shape,
            **options,
        )
        entries = _convnet_entries(depth, simplex, trainable_head)
    return _reference_aligned(model, constrained), entries


def _check_head(state, head, trainable_head):
    """The reference's fixed simplex head has no ``init_weight``; its
    trainable linear head has one (when the checkpoint records them)."""
    records = any(key.endswith(".init_weight") for key in state)
    has_init = f"{head}.init_weight" in state
    if records and trainable_head and not has_init:
        raise ValueError(
            f"The checkpoint's classifier {head!r} has no init_weight: it is the reference's "
            "fixed simplex classifier, built for a classifier distance of 0; pass dist[3]=0."
        )
    if not trainable_head and has_init:
        raise ValueError(
            f"The checkpoint's classifier {head!r} is trainable (it has an init_weight), "
            "but dist[3]=0 builds the fixed simplex classifier; pass the run's --dist."
        )


def _load_weights(model, entries, state):
    """Assigns the checkpoint's weights; returns the keys it used."""
    used = set()
    for entry in entries:
        layer = model.get_layer(entry.layer)
        if entry.kind == BATCH_NORM:
            for variable, name in _BATCH_NORM_VARIABLES.items():
                key = f"{entry.prefix}.{name}"
                if key not in state:
                    raise ValueError(f"The checkpoint has no {key!r}.")
                target = getattr(layer, variable)
                _check_shape(key, state[key], tuple(target.shape), entry.layer)
                target.assign(np.asarray(state[key], np.float32))
                used.add(key)
            used.add(f"{entry.prefix}.num_batches_tracked")
            continue
        key = f"{entry.prefix}.weight"
        if key not in state:
            raise ValueError(f"The checkpoint has no {key!r}.")
        _check_shape(key, state[key], _torch_shape(layer, entry.kind), entry.layer)
        layer.kernel.assign(_keras_kernel(state[key], entry.kind))
        used.update((key, f"{entry.prefix}.init_weight"))
        if entry.kind == SIMPLEX:
            _check_simplex(layer, key)
    # The convnets register their head twice (``model.5`` and ``cls``).
    for key in [k for k in state if k.startswith("cls.")]:
        twin = "model.5." + key[len("cls.") :]
        if twin in used and np.array_equal(state[key], state[twin]):
            used.add(key)
    return used
