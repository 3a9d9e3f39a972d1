"""Model-level measurement: the network Lipschitz bound against an
adversarial search, pooling and BatchNorm constants against operator
matrices, margins and spectral complexity against numpy, and constrain()."""

import math
import warnings

import keras
import numpy as np
import pytest

import keras_capacity as kc
from keras_capacity import network
from tests.conftest import operator_matrix
from tests.test_fixed_layers import worst_case_ratio


def small_residual_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        4, 3, padding="same", name="stem", kernel_constraint=kc.LipDist(2.0, 10)
    )(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(3, 2, padding="same")(x)
    skip = kc.PoolingShortcut(name="shortcut")(x)
    y = kc.CircularConv2D(8, 3, name="branch", kernel_constraint=kc.LipDist(1.5, 10))(x)
    y = keras.layers.MaxPooling2D(2, 2)(y)
    x = keras.layers.Add()([skip, y])
    x = kc.GroupSort(2)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="fc", kernel_constraint=kc.LipDist(1.0, 10))(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.gamma.assign(np.array([1.5, -0.5, 2.0, 1.0], np.float32))
    bn.moving_variance.assign(np.array([0.5, 2.0, 3.0, 1.0], np.float32))
    kc.bind(model)
    return model


def test_network_bound_is_an_upper_bound():
    model = small_residual_model()
    bound = network.network_lipschitz(model)
    bn = 1.5 / math.sqrt(0.5 + 1e-3)
    stem, branch = kc.lipschitz(model.get_layer("stem")), kc.lipschitz(model.get_layer("branch"))
    # stem, BN, max-pool 3/2 (2), then shortcut + branch, GAP over 2x2, fc.
    expected = stem * bn * 2 * (math.sqrt(2) + branch) * 0.5 * kc.lipschitz(model.get_layer("fc"))
    assert bound == pytest.approx(expected, rel=1e-9)
    reused = network.kernel_norms(network.layer_table(model))
    assert network.network_lipschitz(model, reused) == pytest.approx(bound, rel=1e-12)
    found = max(
        worst_case_ratio(lambda v: model(v, training=False), (8, 8, 3), seed=s) for s in range(2)
    )
    assert found <= bound * (1 + 1e-5)
    assert found > 0.05 * bound  # the search is not trivially small


@pytest.mark.parametrize(
    "size,pool,stride,padding",
    [
        ((8, 8), 3, 2, "same"),
        ((7, 5), 3, 2, "valid"),
        ((6, 6), 2, 2, "valid"),
        ((2, 2), 3, 2, "same"),
        ((9, 9), 3, 1, "same"),
    ],
)
def test_max_pool_constant_is_reached_by_one_pixel(size, pool, stride, padding):
    layer = keras.layers.MaxPooling2D(pool, stride, padding=padding)
    stated = network.layer_lipschitz(layer, (1, *size, 1))
    gains = []
    for i in range(size[0]):
        for j in range(size[1]):
            spike = np.zeros((1, *size, 1), np.float32)
            spike[0, i, j] = 1.0
            gains.append(np.linalg.norm(layer(spike).numpy()))
    assert stated == pytest.approx(max(gains), rel=1e-6)
    assert worst_case_ratio(layer, (*size, 1), steps=100) <= stated * (1 + 1e-5)


@pytest.mark.parametrize("pool,stride,padding", [(2, 2, "valid"), (3, 2, "same"), (3, 1, "valid")])
def test_average_pool_bound_covers_the_operator_norm(pool, stride, padding):
    layer = keras.layers.AveragePooling2D(pool, stride, padding=padding)
    exact = np.linalg.norm(operator_matrix(layer, (6, 6, 1)), 2)
    stated = network.layer_lipschitz(layer, (1, 6, 6, 1))
    assert exact <= stated * (1 + 1e-6)
    if pool == stride and padding == "valid":
        assert stated == pytest.approx(exact, rel=1e-6)
    gap = keras.layers.GlobalAveragePooling2D()
    assert network.layer_lipschitz(gap, (1, 6, 6, 1)) == pytest.approx(
        np.linalg.norm(operator_matrix(gap, (6, 6, 1)), 2), rel=1e-6
    )


def test_batch_norm_inference_constant():
    bn = keras.layers.BatchNormalization(epsilon=0.01)
    bn.build((None, 5))
    bn.gamma.assign(np.array([0.3, -2.0, 1.0, 0.5, 1.2], np.float32))
    bn.moving_variance.assign(np.array([0.1, 4.0, 1.0, 0.01, 2.0], np.float32))
    bn.moving_mean.assign(np.random.randn(5).astype(np.float32))
    matrix = operator_matrix(lambda v: bn(v, training=False), (5,))
    assert network.layer_lipschitz(bn, (1, 5)) == pytest.approx(np.linalg.norm(matrix, 2), rel=1e-5)


def test_preprocessing_constants_are_their_operator_norms():
    """Rescaling, Normalization (both ways) and nearest UpSampling2D: the
    stated constant is the norm of the layer's own (affine) map."""
    shape = (3, 3, 3)
    normalization = keras.layers.Normalization(mean=[0.1, 0.2, 0.3], variance=[0.25, 4.0, 0.04])
    inverse = keras.layers.Normalization(
        mean=[0.1, 0.2, 0.3], variance=[0.25, 4.0, 0.04], invert=True
    )
    for layer in (
        keras.layers.Rescaling(1 / 255),
        keras.layers.Rescaling([0.5, -3.0, 1.0]),
        normalization,
        inverse,
        keras.layers.UpSampling2D((2, 3)),
    ):
        layer.build((None, *shape))
        stated = network.layer_lipschitz(layer, (1, *shape))
        exact = np.linalg.norm(operator_matrix(layer, shape), 2)
        assert stated == pytest.approx(exact, rel=1e-5), layer.name
    with pytest.raises(ValueError, match="bilinear"):
        network.layer_lipschitz(keras.layers.UpSampling2D(interpolation="bilinear"), (1, *shape))


def test_unknown_layers_are_refused():
    inputs = keras.Input((4,))
    outputs = keras.layers.Multiply()([inputs, inputs])
    with pytest.raises(ValueError, match="Multiply"):
        network.network_lipschitz(keras.Model(inputs, outputs))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="mish")])
    with pytest.raises(ValueError, match="mish"):
        network.network_lipschitz(model)


def test_margins_against_numpy():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5)])
    x = np.random.randn(37, 6).astype(np.float32)
    y = np.random.randint(0, 5, 37)
    scores = x.astype(np.float64) @ model.layers[0].kernel.numpy() + model.layers[0].bias.numpy()
    expected = [scores[i, y[i]] - np.max(np.delete(scores[i], y[i])) for i in range(37)]
    np.testing.assert_allclose(network.margins(model, x, y, batch_size=10), expected, atol=1e-5)
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    np.testing.assert_allclose(network.margins(model, dataset), expected, atol=1e-5)
    with pytest.raises(ValueError, match="labels must lie"):
        network.margins(model, x, y + 5)


def test_spectral_complexity_against_numpy():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, use_bias=False, kernel_constraint=kc.LipDist(2.0, 5.0)),
            keras.layers.ReLU(),
            keras.layers.Dense(4, use_bias=False, kernel_constraint=kc.LipDist(1.0, 5.0)),
        ]
    )
    kc.bind(model)
    k0 = [layer.kernel.numpy().astype(np.float64) for layer in model.layers[::2]]
    for layer in model.layers[::2]:
        layer.kernel.assign(layer.kernel.numpy() + 0.3 * np.random.randn(*layer.kernel.shape))
    k = [layer.kernel.numpy().astype(np.float64) for layer in model.layers[::2]]
    s = [np.linalg.norm(m, 2) for m in k]
    b = [np.linalg.norm(m - m0, axis=0).sum() for m, m0 in zip(k, k0, strict=False)]
    expected = np.prod(s) * sum((bi / si) ** (2 / 3) for bi, si in zip(b, s, strict=False)) ** 1.5
    assert network.spectral_complexity(model) == pytest.approx(expected, rel=1e-6)


def test_table_reports_constraints_and_violations():
    model = small_residual_model()
    rows = {r["name"]: r for r in network.layer_table(model)}
    assert set(rows) == {"stem", "bn", "shortcut", "branch", "fc"}
    assert rows["branch"]["input_size"] == "4x4" and rows["branch"]["params"] == 3 * 3 * 4 * 8 + 8
    assert rows["shortcut"]["lipschitz"] == pytest.approx(math.sqrt(2))
    assert all(r["holds"] for r in rows.values())
    fc = model.get_layer("fc")
    fc.kernel.assign(3 * fc.kernel.numpy())
    rows = {r["name"]: r for r in network.layer_table(model)}
    assert not rows["fc"]["holds"] and rows["fc"]["lipschitz"] > 1.0
    text = network.format_table(network.layer_table(model))
    assert "NO" in text and "branch" in text


def functional_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs)


def test_constrain_a_functional_model():
    original = functional_model()
    with pytest.warns(
        UserWarning, match=r"^constrain: 1 layer .* 1 BatchNormalization \(norm\)\. "
    ):
        model = kc.constrain(
            original,
            lip=50.0,
            dist=100.0,
            overrides={"head": {"dist": 2.0}, keras.layers.Conv2D: {"lip": 40.0}},
        )
    found = {layer.name: c for layer, c in kc.binding.constrained_layers(model)}
    assert set(found) == {"conv_a", "conv_b", "head"}
    assert (found["conv_a"].lip, found["conv_a"].dist) == (40.0, 100.0)
    assert (found["head"].lip, found["head"].dist) == (50.0, 2.0)
    assert all(c.is_bound for c in found.values())
    x = np.random.randn(8, 8, 8, 3).astype(np.float32)
    # The bounds are loose, so the copy computes what the original does.
    np.testing.assert_allclose(model(x), original(x), rtol=1e-5, atol=1e-5)
    assert not original.get_layer("head").kernel_constraint
    assert kc.retrofit.unconstrained_layers(model) == ["norm"]
    model.compile("adam", "mse")
    model.fit(x, np.random.randn(8, 4), epochs=3, verbose=0)
    assert all(r["holds"] for r in network.layer_table(model))
    assert kc.distance(model.get_layer("head")) > 0


def test_the_warning_is_one_short_line_however_many_layers_stay():
    inputs = keras.Input((6, 6, 2))
    x = inputs
    for i in range(5):
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x)))
    with pytest.warns(UserWarning) as caught:
        copy = kc.constrain(model, lip=2.0)
    (message,) = [str(w.message) for w in caught if w.category is UserWarning]
    assert message == (
        "constrain: 6 layers with trainable weights stay unconstrained: "
        "5 BatchNormalization (bn0, bn1, bn2, ...); 1 LayerNormalization (ln). "
        "keras_capacity.retrofit.unconstrained_layers(model) lists them all."
    )
    assert kc.retrofit.unconstrained_layers(copy) == [*(f"bn{i}" for i in range(5)), "ln"]


def test_constrain_scales_down_and_refuses_bad_input():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = kc.constrain(functional_model(), lip=0.5, overrides={"head": None})
    assert kc.lipschitz(model.get_layer("conv_a")) == pytest.approx(0.5, rel=1e-5)
    assert not model.get_layer("head").kernel_constraint
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        kc.constrain(functional_model(), overrides={"nope": {}})
    with pytest.raises(ValueError, match="unknown settings"):
        kc.constrain(functional_model(), overrides={"head": {"lipschitz": 1}})
    with pytest.raises(ValueError, match="lip"):
        kc.constrain(functional_model(), lip=-1.0)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="Sequential or functional"):
        kc.constrain(Subclassed())
