"""``LipDist`` on every linear layer Keras has (issue 28, part 2):
depthwise, separable, grouped (zero-padded and circular), 1-D, 3-D,
transposed and ``1 x 1`` convolutions. Every bound is checked against the
dense matrix of the layer's own map (from basis inputs) and every distance
against numpy on the plain-convolution kernel the layer equals, never
against the library's own numbers."""

import warnings

import keras
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
from conftest import BACKEND, operator_matrix
from test_linear_layers import group21, plain_equivalents

import keras_capacity as kc
from keras_capacity.constraints import DISTANCE_TOLERANCE, LIPSCHITZ_TOLERANCE

L = keras.layers

# {kind: (layer with the given LipDist, input shape)}.
KINDS = {
    "DepthwiseConv2D": (
        lambda c: L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, depthwise_constraint=c),
        (6, 6, 3),
    ),
    "DepthwiseConv1D": (
        lambda c: L.DepthwiseConv1D(3, strides=2, depthwise_constraint=c),
        (9, 3),
    ),
    "SeparableConv2D": (
        lambda c: L.SeparableConv2D(
            4, 3, strides=2, padding="same", depth_multiplier=2, pointwise_constraint=c
        ),
        (7, 6, 3),
    ),
    "SeparableConv1D": (
        lambda c: L.SeparableConv1D(4, 3, dilation_rate=2, pointwise_constraint=c),
        (9, 3),
    ),
    "Conv2D-groups": (
        lambda c: L.Conv2D(6, 3, padding="same", groups=3, kernel_constraint=c),
        (6, 5, 6),
    ),
    "CircularConv2D-groups": (
        lambda c: kc.CircularConv2D(6, 3, groups=2, kernel_constraint=c),
        (6, 6, 4),
    ),
    "Conv1D-causal": (
        lambda c: L.Conv1D(4, 3, padding="causal", dilation_rate=2, kernel_constraint=c),
        (9, 3),
    ),
    "Conv3D": (lambda c: L.Conv3D(3, 2, padding="same", kernel_constraint=c), (3, 4, 5, 2)),
    "Conv2DTranspose": (
        lambda c: L.Conv2DTranspose(3, 3, strides=2, padding="same", kernel_constraint=c),
        (4, 3, 2),
    ),
    "Conv2D-1x1": (lambda c: L.Conv2D(5, 1, strides=2, kernel_constraint=c), (5, 5, 4)),
}


def kernels(layer):
    """The layer's kernels (float64 numpy): depthwise and pointwise for a
    separable layer, else the one kernel."""
    names = ("depthwise_kernel", "pointwise_kernel") if hasattr(layer, "pointwise_kernel") else ()
    variables = [getattr(layer, n) for n in names] or [layer.kernel]
    return [np.asarray(keras.ops.convert_to_numpy(v), np.float64) for v in variables]


def oracle_norm(layer, shape):
    """``||A||_2`` of the dense matrix of the layer's own map: from the
    eigenvalues of its Gram matrix on the smaller side, or, when that side
    is large, by ARPACK on the explicit matrix (stored sparse: a
    convolution's matrix is mostly zeros)."""
    matrix = operator_matrix(layer, shape)
    if min(matrix.shape) > 1000:
        sparse = scipy.sparse.csr_matrix(matrix)
        return float(
            scipy.sparse.linalg.svds(sparse, k=1, tol=1e-12, return_singular_vectors=False)[0]
        )
    gram = matrix.T @ matrix if matrix.shape[1] <= matrix.shape[0] else matrix @ matrix.T
    return float(np.sqrt(np.linalg.eigvalsh(gram)[-1]))


def oracle_distance(layer, initial):
    """(2,1) distance of the plain-convolution kernels (numpy), over the
    input axis: the last one of a transposed kernel ``(..., out, in)``."""
    transposed = isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose))
    kernel = plain_equivalents(layer, kernels(layer))
    start = plain_equivalents(layer, initial)
    return group21(kernel, start, axis=-1 if transposed else -2)


def moved(layer, scale, seed=0):
    """Every kernel moved by ``scale`` standard normals (a large step)."""
    rng = np.random.default_rng(seed)
    names = ("depthwise_kernel", "pointwise_kernel") if hasattr(layer, "pointwise_kernel") else ()
    for variable in [getattr(layer, n) for n in names] or [layer.kernel]:
        noise = scale * rng.standard_normal(variable.shape)
        variable.assign(keras.ops.convert_to_numpy(variable) + noise.astype("float32"))


def check(layer, shape, initial, lip, dist):
    assert oracle_norm(layer, shape) <= lip * (1 + LIPSCHITZ_TOLERANCE), layer.name
    assert oracle_distance(layer, initial) <= dist * (1 + DISTANCE_TOLERANCE), layer.name


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bind_and_projection_meet_both_bounds_after_a_large_step(kind):
    make, shape = KINDS[kind]
    layer = make(kc.LipDist(0.7))
    model = keras.Sequential([keras.Input(shape), layer])
    kc.bind(model)
    assert oracle_norm(layer, shape) <= 0.7 * (1 + 1e-5)
    moved(layer, 1.0)
    kc.project(model)
    # Lipschitz only: the radial projection lands on the bound, not below.
    assert oracle_norm(layer, shape) == pytest.approx(0.7, rel=LIPSCHITZ_TOLERANCE)

    both = make(kc.LipDist(0.7, 1.5))
    model = keras.Sequential([keras.Input(shape), both])
    kc.bind(model)
    initial = kernels(both)
    assert kc.distance(both) == 0.0
    moved(both, 1.0, seed=1)
    kc.project(model)
    check(both, shape, initial, 0.7, 1.5)
    assert kc.distance(both) == pytest.approx(oracle_distance(both, initial), rel=1e-6)


def image_model(constraint):
    """A chain of every 2-D kind, each with ``constraint()``."""
    inputs = keras.Input((8, 8, 4))
    x = L.DepthwiseConv2D(3, padding="same", depthwise_constraint=constraint(), name="dw")(inputs)
    x = L.ReLU()(x)
    x = L.SeparableConv2D(
        6, 3, strides=2, padding="same", pointwise_constraint=constraint(), name="sep"
    )(x)
    x = L.Conv2D(6, 3, padding="same", groups=2, kernel_constraint=constraint(), name="grouped")(x)
    x = kc.CircularConv2D(6, 3, groups=3, kernel_constraint=constraint(), name="circular")(x)
    x = L.Conv2DTranspose(
        3, 3, strides=2, padding="same", kernel_constraint=constraint(), name="up"
    )(x)
    x = L.Conv2D(2, 1, kernel_constraint=constraint(), name="pointwise")(x)
    return keras.Model(inputs, x)


def volume_model(constraint):
    inputs = keras.Input((4, 4, 4, 2))
    x = L.Conv3D(3, 2, padding="same", kernel_constraint=constraint(), name="conv3d")(inputs)
    x = L.Conv3DTranspose(2, 2, strides=2, kernel_constraint=constraint(), name="up3d")(x)
    return keras.Model(inputs, x)


def fit_large_steps(model, epochs=2, seed=0):
    """A few SGD steps of size 10 toward outputs of size 10."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((8, *model.input_shape[1:])).astype("float32")
    y = 10 * rng.standard_normal((8, *model.output_shape[1:])).astype("float32")
    model.compile(keras.optimizers.SGD(10.0), "mse")
    model.fit(x, y, batch_size=4, epochs=epochs, verbose=0)


def check_model(model, initial, lip, dist):
    for layer, _ in kc.binding.constrained_layers(model):
        check(layer, tuple(layer.input.shape[1:]), initial[layer.name], lip, dist)


@pytest.mark.parametrize("build", [image_model, volume_model], ids=["image", "volume"])
def test_fit_keeps_every_kind_within_its_bounds_under_large_steps(build):
    model = build(lambda: kc.LipDist(0.8, 2.0))
    kc.bind(model)
    initial = {layer.name: kernels(layer) for layer, _ in kc.binding.constrained_layers(model)}
    for seed in range(2):
        fit_large_steps(model, epochs=1, seed=seed)
        check_model(model, initial, 0.8, 2.0)
    assert all(kc.distance(layer) > 0.1 for layer, _ in kc.binding.constrained_layers(model))


def test_save_and_load_keep_k0_of_every_kind(tmp_path):
    model = image_model(lambda: kc.LipDist(0.8, 2.0))
    kc.bind(model)
    pairs = kc.binding.constrained_layers(model)
    initial = {layer.name: kernels(layer) for layer, _ in pairs}
    fit_large_steps(model, epochs=1)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for layer, constraint in kc.binding.constrained_layers(loaded):
        assert constraint.is_bound
        original = model.get_layer(layer.name)
        assert kc.distance(layer) == pytest.approx(kc.distance(original), rel=1e-12)
        assert oracle_distance(layer, initial[layer.name]) == pytest.approx(
            kc.distance(layer), rel=1e-6
        )
    if BACKEND == "tensorflow":  # a separable layer needs its depthwise kernel from bind
        with pytest.raises(ValueError, match=r"sep/pointwise_kernel.*keras_capacity\.bind"):
            fit_large_steps(loaded, epochs=1)
    kc.bind(loaded)  # keeps the restored K0
    fit_large_steps(loaded, epochs=1, seed=1)
    check_model(loaded, initial, 0.8, 2.0)


def test_orthogonal_mode_on_a_grouped_circular_convolution_is_per_group():
    """Lipschitz only: the nearest kernel of a block-diagonal operator is
    each group's nearest kernel, computed here by one CircularConv2D per
    group (the ungrouped projection, tested against its own oracles). The
    taps fill the 3x3 grid, so the projection is the exact one."""
    layer = kc.CircularConv2D(4, 3, groups=2, kernel_constraint=kc.LipDist(0.5, mode="orthogonal"))
    model = keras.Sequential([keras.Input((3, 3, 4)), layer])
    kc.bind(model)
    moved(layer, 1.0)
    kernel = kernels(layer)[0].astype("float32")
    kc.project(model)
    projected = kernels(layer)[0]
    for g in range(2):
        single = kc.CircularConv2D(2, 3, kernel_constraint=kc.LipDist(0.5, mode="orthogonal"))
        kc.bind(keras.Sequential([keras.Input((3, 3, 2)), single]))
        expected = single.kernel_constraint.project(kernel[..., 2 * g : 2 * g + 2])
        np.testing.assert_allclose(projected[..., 2 * g : 2 * g + 2], expected, atol=1e-5)
    assert oracle_norm(layer, (3, 3, 4)) == pytest.approx(0.5, rel=1e-5)

    both = kc.CircularConv2D(
        6, 3, groups=3, kernel_constraint=kc.LipDist(0.5, 1.0, mode="orthogonal", n_iter=3)
    )
    model = keras.Sequential([keras.Input((6, 6, 6)), both])
    kc.bind(model)
    initial = kernels(both)
    fit_large_steps(model)
    check(both, (6, 6, 6), initial, 0.5, 1.0)


@pytest.mark.parametrize(
    "kind", ["DepthwiseConv2D", "SeparableConv2D", "Conv1D-causal", "Conv2DTranspose"]
)
def test_orthogonal_mode_is_refused_in_one_line_where_no_nearest_kernel_is_exact(kind):
    make, shape = KINDS[kind]
    layer = make(kc.LipDist(1.0, mode="orthogonal"))
    with pytest.raises(ValueError, match=f"{layer.name}.*mode='radial'") as error:
        kc.bind(keras.Sequential([keras.Input(shape), layer]))
    assert "\n" not in str(error.value)


def test_constrain_a_conv1d_sequence_model_end_to_end():
    inputs = keras.Input((16, 3))
    x = L.Conv1D(4, 3, padding="causal", dilation_rate=2, name="causal")(inputs)
    x = L.ReLU()(x)
    x = L.DepthwiseConv1D(3, padding="same", depth_multiplier=2, name="dw1")(x)
    x = L.SeparableConv1D(4, 3, strides=2, name="sep1")(x)
    x = L.Conv1DTranspose(4, 3, strides=2, padding="same", name="up1")(x)
    x = L.GlobalAveragePooling1D()(x)
    plain = keras.Model(inputs, L.Dense(3, name="fc")(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing stays unconstrained
        model = kc.constrain(plain, lip=0.9, dist=1.5, overrides={L.Dense: {"lip": 0.5}})
    found = {layer.name: c for layer, c in kc.binding.constrained_layers(model)}
    assert set(found) == {"causal", "dw1", "sep1", "up1", "fc"}
    assert found["fc"].lip == 0.5 and found["sep1"].lip == 0.9
    assert kc.retrofit.unconstrained_layers(model) == []
    initial = {name: kernels(model.get_layer(name)) for name in found}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 16, 3)).astype("float32")
    model.compile(
        keras.optimizers.SGD(5.0),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, rng.integers(0, 3, 16), batch_size=4, epochs=2, verbose=0)
    # The measurement reads each layer's K0 from its constraint.
    rows = {row["name"]: row for row in kc.measure(model, (x, rng.integers(0, 3, 16))).layers}
    for name, constraint in found.items():
        layer = model.get_layer(name)
        shape = tuple(layer.input.shape[1:])
        assert oracle_norm(layer, shape) <= constraint.lip * (1 + LIPSCHITZ_TOLERANCE), name
        distance = oracle_distance(layer, initial[name])
        assert 0 < distance <= constraint.dist * (1 + DISTANCE_TOLERANCE), name
        assert rows[name]["distance"] == pytest.approx(distance, rel=1e-6), name
    assert all(row["holds"] for row in kc.layer_table(model) if row["name"] in found)


def depthwise_oracle_norm(layer):
    """The largest over the channels of a (channels-last) depthwise layer
    of the norm of each channel's own dense matrix (the layer is block
    diagonal; its whole matrix is too large here): the layer applied to
    every basis input of one channel's plane, placed in all channels at
    once, less its image of zero."""
    *size, channels = layer.input.shape[1:]
    n = int(np.prod(size))
    basis = np.repeat(np.eye(n, dtype=np.float32).reshape(n, *size, 1), channels, axis=-1)
    zero = np.asarray(layer(np.zeros((1, *size, channels), np.float32)), np.float64)
    images = np.asarray(layer(basis), np.float64) - zero
    images = images.reshape(n, -1, channels, images.shape[-1] // channels)  # output c m + j
    grams = np.einsum("ipcj,kpcj->cik", images, images)
    return float(np.sqrt(np.linalg.eigvalsh(grams)[:, -1].max()))


@pytest.mark.slow
def test_constrain_mobilenet_v2_end_to_end():
    """Its 17 DepthwiseConv2D, 35 Conv2D and the Dense head constrained
    (only its BatchNorms stay as they are), bound, trained two steps. At
    width 0.35: the same layers, a third of the channels (half the time)."""
    base = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35
    )
    with pytest.warns(UserWarning) as caught:
        model = kc.constrain(base, lip=1.0, dist=20.0)
    (message,) = [str(w.message) for w in caught if w.category is UserWarning]
    assert message.startswith("constrain: 52 layers with trainable weights stay unconstrained: ")
    assert "52 BatchNormalization (bn_Conv1, " in message and "Depthwise" not in message
    pairs = kc.binding.constrained_layers(model)
    kinds = [type(layer).__name__ for layer, _ in pairs]
    assert (kinds.count("DepthwiseConv2D"), kinds.count("Conv2D"), kinds.count("Dense")) == (
        17,
        35,
        1,
    )
    initial = {layer.name: kernels(layer) for layer, _ in pairs}
    rng = np.random.default_rng(0)
    model.compile(
        keras.optimizers.SGD(1.0),
        keras.losses.SparseCategoricalCrossentropy(),
        run_eagerly=True,  # tracing 53 constraints into one step takes longer than the steps
    )
    model.fit(
        rng.standard_normal((8, 32, 32, 3)).astype("float32"),
        rng.integers(0, 10, 8),
        batch_size=4,
        verbose=0,
    )
    for layer, _ in pairs:
        kernel = kernels(layer)[0]
        if isinstance(layer, L.DepthwiseConv2D):
            norm = depthwise_oracle_norm(layer)
        elif kernel.ndim == 2 or kernel.shape[:2] == (1, 1):
            norm = np.linalg.norm(kernel.reshape(kernel.shape[-2:]), 2)  # 1x1: the matrix
        else:
            norm = oracle_norm(layer, tuple(layer.input.shape[1:]))
        assert norm <= 1.0 * (1 + LIPSCHITZ_TOLERANCE), layer.name
        assert oracle_distance(layer, initial[layer.name]) <= 20.0 * (1 + DISTANCE_TOLERANCE)
