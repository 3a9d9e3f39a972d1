"""Every linear layer Keras has (issue 28, parts 1 and 4): the Lipschitz
constant of depthwise, separable, grouped, 1-D, 3-D and transposed
convolutions against the dense matrix of the layer's own map (float64, from
basis inputs), and ``kc.measure`` of models built from them: their
constants, their (2,1) distances against numpy, the chain rule, and the
network bound against a worst case that gradient ascent finds."""

import keras
import numpy as np
import pytest

import keras_capacity as kc
from keras_capacity import bounds
from tests.conftest import operator_matrix, worst_case_gain

L = keras.layers
# (strides, dilation): Keras refuses both above 1 for its convolutions and
# transposed convolutions, and allows it for depthwise and separable ones.
STEPS = ((1, 1), (2, 1), (1, 2))
STEPS_BOTH = (*STEPS, (2, 2))


def _cases():
    """``{id: (layer class, keyword arguments, input shape)}``: each kind,
    each padding, stride and dilation Keras accepts, on inputs small enough
    for the dense matrix (odd and even sizes, so "same" pads unevenly)."""
    cases = {}
    for padding in ("valid", "same", "causal"):
        for s, d in STEPS:
            arguments = dict(filters=4, kernel_size=3, strides=s, dilation_rate=d, padding=padding)
            cases[f"Conv1D-{padding}-s{s}-d{d}"] = (L.Conv1D, arguments, (9, 3))
        s, d = STEPS[("valid", "same", "causal").index(padding)]
        arguments = dict(
            filters=4, kernel_size=3, strides=s, dilation_rate=d, groups=2, padding=padding
        )
        cases[f"Conv1D-groups-{padding}-s{s}-d{d}"] = (L.Conv1D, arguments, (9, 4))
    for padding in ("valid", "same"):
        for s, d in STEPS:
            common = dict(strides=s, dilation_rate=d, padding=padding)
            cases[f"Conv2D-groups-{padding}-s{s}-d{d}"] = (
                L.Conv2D,
                dict(filters=6, kernel_size=3, groups=3, **common),
                (6, 5, 6),
            )
            cases[f"Conv3D-{padding}-s{s}-d{d}"] = (
                L.Conv3D,
                dict(filters=3, kernel_size=2, **common),
                (3, 4, 5, 2),
            )
            for rank, shape in ((1, (5, 2)), (2, (4, 3, 2)), (3, (2, 3, 2, 2))):
                layer = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)[rank - 1]
                for extra in (None, 1) if s > 1 else (None,):
                    arguments = dict(filters=3, kernel_size=3 if rank < 3 else 2, **common)
                    cases[f"Conv{rank}DTranspose-{padding}-s{s}-d{d}-op{extra}"] = (
                        layer,
                        {**arguments, "output_padding": extra},
                        shape,
                    )
        for s, d in STEPS_BOTH:
            common = dict(kernel_size=3, strides=s, dilation_rate=d, padding=padding)
            for rank, shape in ((1, (9, 3)), (2, (6, 5, 3))):
                depthwise = (L.DepthwiseConv1D, L.DepthwiseConv2D)[rank - 1]
                separable = (L.SeparableConv1D, L.SeparableConv2D)[rank - 1]
                multiplier = 1 + (s + d) % 2  # 1 and 2, in turn
                cases[f"Depthwise{rank}D-{padding}-s{s}-d{d}-m{multiplier}"] = (
                    depthwise,
                    dict(depth_multiplier=multiplier, **common),
                    shape,
                )
                cases[f"Separable{rank}D-{padding}-s{s}-d{d}-m{multiplier}"] = (
                    separable,
                    dict(filters=4, depth_multiplier=multiplier, **common),
                    shape,
                )
    # Inputs above the dense Gram limit (256 per group): converged Lanczos.
    cases["Depthwise2D-lanczos"] = (
        L.DepthwiseConv2D,
        dict(kernel_size=3, padding="same", depth_multiplier=2),
        (17, 16, 2),
    )
    cases["Separable2D-lanczos"] = (
        L.SeparableConv2D,
        dict(filters=4, kernel_size=3, strides=2, padding="same"),
        (11, 10, 3),
    )
    cases["Conv2D-groups-lanczos"] = (
        L.Conv2D,
        dict(filters=4, kernel_size=3, padding="same", groups=2),
        (12, 12, 4),
    )
    cases["Conv2DTranspose-lanczos"] = (
        L.Conv2DTranspose,
        dict(filters=2, kernel_size=3, strides=2, padding="same", output_padding=1),
        (9, 8, 4),
    )
    cases["Conv2DTranspose-even-kernel"] = (
        L.Conv2DTranspose,
        dict(filters=3, kernel_size=4, strides=2, padding="same", output_padding=1),
        (4, 3, 2),
    )
    cases["CircularConv2D-groups-fft"] = (
        kc.CircularConv2D,
        dict(filters=6, kernel_size=3, groups=2),
        (6, 6, 4),
    )
    return cases


CASES = _cases()


def float64_copy(layer, input_shape):
    """The layer rebuilt in float64 with its own weights: its map, computed
    by Keras in float64 (the oracle)."""
    copy = type(layer).from_config({**layer.get_config(), "dtype": "float64"})
    copy.build((None, *input_shape))
    copy.set_weights(layer.get_weights())
    return copy


def dense_norm(layer, input_shape):
    """``||A||_2`` of the dense matrix of the layer's own map (float64):
    its images of every basis input, less its image of zero (the bias),
    in one call."""
    copy = float64_copy(layer, input_shape)
    n = int(np.prod(input_shape))
    inputs = np.concatenate([np.zeros((1, n)), np.eye(n)]).reshape(n + 1, *input_shape)
    images = np.asarray(copy(inputs), np.float64).reshape(n + 1, -1)
    return np.linalg.svd(images[1:] - images[0], compute_uv=False)[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_lipschitz_is_the_norm_of_the_layers_own_map(case):
    layer_class, arguments, shape = CASES[case]
    layer = layer_class(**arguments)
    layer.build((None, *shape))
    try:
        expected = dense_norm(layer, shape)
    except Exception as error:  # the backend cannot run this layer here
        if "dilation rates larger than 1" in str(error):
            pytest.skip(f"{keras.backend.backend()} on this device: {str(error).splitlines()[0]}")
        raise
    assert kc.lipschitz(layer) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_a_grouped_convolution_is_the_largest_of_its_groups(seed):
    """The issue's example: on 8x8x4 a Conv2D(4, 3, padding="same",
    groups=2) was overestimated by 9-21% (2.026 for 1.857), its kernel
    taken for a 2-channel convolution."""
    keras.utils.set_random_seed(seed)
    layer = L.Conv2D(4, 3, padding="same", groups=2)
    layer.build((None, 8, 8, 4))
    expected = dense_norm(layer, (8, 8, 4))
    assert kc.lipschitz(layer) == pytest.approx(expected, rel=1e-6)
    kernel = layer.get_weights()[0]
    groups = []
    for g in range(2):  # each group on its own: a 2-channel Conv2D
        half = L.Conv2D(2, 3, padding="same", use_bias=False)
        half.build((None, 8, 8, 2))
        half.set_weights([kernel[..., 2 * g : 2 * g + 2]])
        groups.append(dense_norm(half, (8, 8, 2)))
    assert expected == pytest.approx(max(groups), rel=1e-12)


@pytest.mark.parametrize(
    "kernel_size, strides, padding, output_padding, size",
    [
        (3, 2, "same", 1, 4),
        (4, 2, "same", None, 3),
        (3, 2, "valid", 1, 4),
        (3, 1, "valid", None, 4),
    ],
)
def test_a_transposed_convolution_has_the_norm_of_the_convolution_it_transposes(
    kernel_size, strides, padding, output_padding, size
):
    """The adjoint of the Conv2D with the same kernel, on inputs of the
    transposed layer's output shape (``output_padding`` included)."""
    transposed = L.Conv2DTranspose(3, kernel_size, strides, padding, output_padding=output_padding)
    transposed.build((None, size, size, 2))
    shape = tuple(transposed.compute_output_shape((None, size, size, 2))[1:])
    conv = L.Conv2D(2, kernel_size, strides, padding, use_bias=False)
    conv.build((None, *shape))
    conv.set_weights(transposed.get_weights()[:1])
    assert conv.compute_output_shape((None, *shape))[1:3] == (size, size)
    assert kc.lipschitz(transposed) == pytest.approx(dense_norm(conv, shape), rel=1e-6)


# ------------------------------------------------------------ kc.measure


def separable_kernel(depthwise, pointwise):
    """The one kernel of depthwise-then-pointwise, by loops (numpy)."""
    *size, channels, multiplier = depthwise.shape
    pointwise = pointwise.reshape(channels * multiplier, -1)
    kernel = np.zeros((*size, channels, pointwise.shape[1]))
    for c in range(channels):
        for j in range(multiplier):
            kernel[..., c, :] += depthwise[..., c, j, None] * pointwise[c * multiplier + j]
    return kernel


def dense_grouped_kernel(kernel, groups):
    """A grouped ``(*k, in / groups, out)`` kernel as the plain convolution's
    ``(*k, in, out)`` kernel: each group's block, zeros elsewhere."""
    *size, per_group, out = kernel.shape
    dense = np.zeros((*size, per_group * groups, out))
    step = out // groups
    for g in range(groups):
        dense[..., g * per_group : (g + 1) * per_group, g * step : (g + 1) * step] = kernel[
            ..., g * step : (g + 1) * step
        ]
    return dense


def group21(kernel, initial, axis=-2):
    """(2,1): l2 over the input axis, summed over everything else."""
    return np.sqrt(((kernel - initial) ** 2).sum(axis=axis)).sum()


def plain_equivalents(layer, weights):
    """The layer's map as a plain convolution's ``(*k, in, out)`` kernel
    (numpy float64, from its weights in Keras's layouts)."""
    weights = [np.asarray(w, np.float64) for w in weights]
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return separable_kernel(weights[0], weights[1])
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        *size, channels, multiplier = weights[0].shape
        grouped = weights[0].reshape(*size, channels, 1, multiplier)
        grouped = np.moveaxis(grouped, -3, -2).reshape(*size, 1, channels * multiplier)
        return dense_grouped_kernel(grouped, channels)
    return dense_grouped_kernel(weights[0], getattr(layer, "groups", 1) or 1)


def moved(model, seed=0, scale=0.05):
    """An init copy of ``model``, and ``model`` moved away from it (as
    training would)."""
    init = keras.models.clone_model(model)
    init.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    model.set_weights([w + scale * rng.standard_normal(w.shape) for w in model.get_weights()])
    return init


def image_model():
    """A chain of 2-D kernels of every new kind, no biases."""
    inputs = keras.Input((8, 7, 3))
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw")(inputs)
    x = L.ReLU()(x)
    x = L.SeparableConv2D(4, 3, strides=2, padding="same", use_bias=False, name="sep")(x)
    x = L.ReLU()(x)
    x = L.Conv2D(4, 3, groups=2, use_bias=False, name="grouped")(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(3, use_bias=False, name="fc")(x))


def sequence_model():
    """Conv1D (causal, dilated), depthwise and separable 1-D, pooled."""
    inputs = keras.Input((16, 3))
    x = L.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=False, name="causal")(inputs)
    x = L.ReLU()(x)
    x = L.DepthwiseConv1D(3, padding="same", depth_multiplier=2, use_bias=False, name="dw1")(x)
    x = L.SeparableConv1D(4, 3, strides=2, use_bias=False, name="sep1")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(3, use_bias=False, name="fc")(x))


def data(shape, count=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *shape)).astype(np.float32), rng.integers(0, 3, count)


def check_layers(model, init, record):
    """Each kernel row: the norm of the layer's own map, and the (2,1)
    distance of its plain-convolution kernel to the init's (numpy)."""
    rows = {row["name"]: row for row in record.layers}
    for layer in model.layers:
        if not kc.linear_layers.is_linear(layer):
            continue
        shape = tuple(layer.input.shape[1:])
        assert rows[layer.name]["lipschitz"] == pytest.approx(dense_norm(layer, shape), rel=1e-6)
        kernel = plain_equivalents(layer, layer.get_weights())
        initial = plain_equivalents(layer, init.get_layer(layer.name).get_weights())
        assert rows[layer.name]["distance"] == pytest.approx(group21(kernel, initial), rel=1e-9)
    return rows


def test_measure_a_chain_of_depthwise_separable_and_grouped_layers():
    keras.utils.set_random_seed(5)
    model = image_model()
    init = moved(model)
    x, y = data((8, 7, 3))
    record = kc.measure(model, (x, y), init=init)
    rows = check_layers(model, init, record)
    assert {rows[n]["kind"] for n in rows} >= {"DepthwiseConv2D", "SeparableConv2D", "Conv2D"}
    assert record.bounds_reason is None
    q = record.quantities
    kernels = [model.get_layer(n) for n in ("dw", "sep", "grouped", "fc")]
    plain = [plain_equivalents(k, k.get_weights()) for k in kernels]
    start = [plain_equivalents(k, init.get_layer(k.name).get_weights()) for k in kernels]
    assert q.in_channels == (3, 6, 4, 16)
    assert q.params == tuple(int(p.size) for p in plain)
    for i, (kernel, initial) in enumerate(zip(plain, start, strict=True)):
        filters = kernel.reshape(-1, kernel.shape[-1])
        assert q.dist21[i] == pytest.approx(group21(kernel, initial), rel=1e-9)
        assert q.norm_fro[i] == pytest.approx(np.linalg.norm(kernel), rel=1e-9)
        assert q.norm_1inf[i] == pytest.approx(np.abs(filters).sum(axis=0).max(), rel=1e-9)
    # Patch norms: the layers' own windows, by Keras convolving x^2 with ones.
    for i, layer in enumerate(kernels[:3]):
        activations = np.asarray(keras.Model(model.input, layer.input)(x), np.float64)
        window = L.Conv2D(
            1,
            layer.kernel_size,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            kernel_initializer="ones",
            use_bias=False,
            dtype="float64",
        )
        widest = float(np.max(window(activations**2)))
        assert q.patch_norms[i] == pytest.approx(np.sqrt(widest), rel=1e-5), layer.name
    assert all(record.test_error_bounds[name] is not None for name in bounds.BOUNDS)
    gain = worst_case_gain(lambda t: model(t), (8, 7, 3), steps=200)
    assert record.network_lipschitz >= gain


def test_measure_a_sequence_model_marks_the_bounds_not_applicable():
    keras.utils.set_random_seed(6)
    model = sequence_model()
    init = moved(model)
    x, y = data((16, 3))
    record = kc.measure(model, (x, y), init=init)
    check_layers(model, init, record)
    assert "'causal'" in record.bounds_reason and "1-D convolution" in record.bounds_reason
    assert record.quantities is None
    assert set(record.not_applicable) == set(bounds.BOUNDS)
    gain = worst_case_gain(lambda t: model(t), (16, 3), steps=200)
    assert record.network_lipschitz >= gain
    table = {row["name"]: row for row in kc.layer_table(model)}
    assert table["dw1"]["input_size"] == "16" and table["sep1"]["stride"] == 2


def test_a_transposed_convolution_is_measured_over_its_last_kernel_axis():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((4, 3, 2))
    x = L.Conv2DTranspose(3, 3, strides=2, padding="same", use_bias=False, name="up")(inputs)
    model = keras.Model(inputs, L.Dense(3, use_bias=False, name="fc")(L.Flatten()(x)))
    init = moved(model)
    record = kc.measure(model, data((4, 3, 2)), init=init)
    row = {r["name"]: r for r in record.layers}["up"]
    kernel, initial = model.get_layer("up").kernel, init.get_layer("up").kernel
    expected = group21(np.asarray(kernel, np.float64), np.asarray(initial, np.float64), axis=-1)
    assert row["distance"] == pytest.approx(expected, rel=1e-9)
    assert row["lipschitz"] == pytest.approx(dense_norm(model.get_layer("up"), (4, 3, 2)), rel=1e-6)
    assert "transposed convolution" in record.bounds_reason


def test_batch_norm_before_a_depthwise_layer_is_folded_into_its_channels():
    keras.utils.set_random_seed(8)
    inputs = keras.Input((6, 6, 3))
    bn = L.BatchNormalization(name="bn")
    dw = L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw")
    x = dw(bn(inputs))
    model = keras.Model(inputs, L.Dense(3, use_bias=False, name="fc")(L.Flatten()(x)))
    bn.gamma.assign(np.array([0.5, 2.0, 1.5], np.float32))
    bn.moving_variance.assign(np.array([4.0, 0.25, 1.0], np.float32))
    record = kc.measure(model, data((6, 6, 3)))
    assert record.bounds_reason is None
    assert {row["name"]: row for row in record.layers}["dw"]["folded"] == "bn"
    matrix = operator_matrix(lambda t: dw(bn(t, training=False)), (6, 6, 3))
    expected = np.linalg.svd(matrix, compute_uv=False)[0]
    assert record.quantities.lipschitz[0] == pytest.approx(expected, rel=1e-5)
