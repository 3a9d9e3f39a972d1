"""LipDist: validation, binding, projection guarantees, counting, configs."""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import operator_matrix, worst_case_gain

import keras_capacity as kc
from keras_capacity.constraints import DISTANCE_TOLERANCE, LIPSCHITZ_TOLERANCE


def conv_model(constraint, **conv_kwargs):
    conv = keras.layers.Conv2D(
        4, 3, padding="same", use_bias=False, kernel_constraint=constraint, **conv_kwargs
    )
    return keras.Sequential([keras.Input((8, 8, 3)), conv]), conv


def perturb(layer, scale=0.5, seed=0):
    kernel = layer.kernel.numpy()
    noise = np.random.default_rng(seed).standard_normal(kernel.shape)
    layer.kernel.assign(kernel + scale * noise.astype(kernel.dtype))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lip=0), "lip"),
        (dict(lip=-1.0), "lip"),
        (dict(lip=math.nan), "lip"),
        (dict(dist=-0.5), "dist"),
        (dict(dist=math.nan), "dist"),
        (dict(lip="a"), "lip"),
        (dict(mode="sideways"), "mode"),
        (dict(n_iter=0), "n_iter"),
        (dict(every=0), "every"),
        (dict(every=1.5), "every"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kc.LipDist(**kwargs)


@pytest.mark.parametrize(
    "make_layer,shape",
    [
        (lambda c: keras.layers.Dense(3, bias_constraint=c), (4,)),
        (lambda c: keras.layers.Embedding(10, 3, embeddings_constraint=c), (4,)),
        (lambda c: keras.layers.SeparableConv2D(3, 3, depthwise_constraint=c), (6, 6, 2)),
    ],
    ids=["bias", "embedding", "separable-depthwise"],
)
def test_bind_refuses_unsupported_layers(make_layer, shape):
    layer = make_layer(kc.LipDist(1.0))
    model = keras.Sequential([keras.Input(shape), layer])
    with pytest.raises(ValueError, match=layer.name):
        kc.bind(model)


def test_shared_constraint_is_refused():
    shared = kc.LipDist(1.0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, kernel_constraint=shared),
            keras.layers.Dense(4, kernel_constraint=shared),
        ]
    )
    with pytest.raises(ValueError, match="shared"):
        kc.bind(model)


@pytest.mark.parametrize("tf32", [True, False])
def test_bind_warns_where_a_gpu_may_round_through_tensorfloat32(monkeypatch, tf32):
    """TensorFlow's TensorFloat-32 switch is process-wide (on by default),
    so binding on a GPU with it on says how to turn it off; without it,
    nothing is said. The GPU is simulated."""
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(tf.config.experimental, "tensor_float_32_execution_enabled", lambda: tf32)
    model, _ = conv_model(kc.LipDist(1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kc.bind(model)
    said = [str(w.message) for w in caught if "TensorFloat-32" in str(w.message)]
    assert len(said) == tf32
    assert all("enable_tensor_float_32_execution(False)" in text for text in said)


def test_unbound_model_fails_on_first_step_naming_bind():
    model, _ = conv_model(kc.LipDist(1.0))
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"keras_capacity\.bind\(model\)"):
        model.fit(np.zeros((4, 8, 8, 3)), np.zeros((4, 8, 8, 4)), verbose=0)


def test_unknown_spatial_size_needs_input_shape():
    conv = keras.layers.Conv2D(4, 3, padding="same", kernel_constraint=kc.LipDist(1.0))
    free = keras.Sequential([keras.Input((None, None, 3)), conv])
    with pytest.raises(ValueError, match="input_shape"):
        kc.bind(free)
    kc.bind(free, input_shape=(8, 8, 3))
    assert conv.kernel_constraint.geometry.input_size == (8, 8)


def test_subclassed_model_binds_with_input_shape():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, strides=2, kernel_constraint=kc.LipDist(0.5))
            self.head = keras.layers.Dense(2, kernel_constraint=kc.LipDist(0.5, 1.0))

        def call(self, x):
            return self.head(keras.ops.reshape(self.conv(x), (-1, 3 * 3 * 4)))

    net = Net()
    kc.bind(net, input_shape=(7, 7, 3))
    assert net.conv.kernel_constraint.geometry.input_size == (7, 7)
    assert net.conv.kernel_constraint.geometry.strides == (2, 2)
    assert kc.lipschitz(net.conv) == pytest.approx(0.5, rel=1e-6)


def test_bind_rescales_to_lip_and_records_k0():
    model, conv = conv_model(kc.LipDist(0.3, 2.0))
    kc.bind(model)
    assert kc.lipschitz(conv) == pytest.approx(0.3, rel=1e-6)
    np.testing.assert_array_equal(
        conv.kernel_constraint.initial_kernel.numpy(), conv.kernel.numpy()
    )
    assert kc.distance(conv) == 0.0
    # Binding again keeps the original K0.
    perturb(conv)
    kc.bind(model)
    assert kc.distance(conv) > 0.1


@pytest.mark.parametrize("conv_kwargs", [dict(), dict(strides=2), dict(dilation_rate=2)], ids=str)
def test_projection_meets_both_bounds_against_adversarial_search(conv_kwargs):
    model, conv = conv_model(kc.LipDist(0.7, 1.5), **conv_kwargs)
    kc.bind(model)
    perturb(conv)
    kc.project(model)
    exact = np.linalg.norm(operator_matrix(conv, (8, 8, 3)), 2)
    assert exact <= 0.7 * (1 + LIPSCHITZ_TOLERANCE)
    # An input the search finds attains the dense matrix's norm (to float32
    # precision): the layer's own map has the gain the oracle says, no more
    # and no less.
    assert worst_case_gain(lambda x: conv(x), (8, 8, 3)) == pytest.approx(exact, rel=1e-5)
    assert kc.distance(conv) <= 1.5 * (1 + DISTANCE_TOLERANCE)


def test_distance_only_is_the_euclidean_projection():
    model, conv = conv_model(kc.LipDist(dist=1.0))
    kc.bind(model)
    k0 = conv.kernel.numpy().astype(np.float64)
    perturb(conv)
    moved = conv.kernel.numpy().astype(np.float64)
    kc.project(model)
    delta = conv.kernel.numpy() - k0
    np.testing.assert_allclose(np.linalg.norm(delta, axis=-2).sum(), 1.0, rtol=1e-5)
    # Every group moved toward K0 along itself, by one common threshold.
    before = np.linalg.norm(moved - k0, axis=-2)
    after = np.linalg.norm(delta, axis=-2)
    active = after > 1e-6
    shrink = before[active] - after[active]
    np.testing.assert_allclose(shrink, shrink.mean(), rtol=1e-3)


def test_zero_distance_freezes_the_kernel():
    model, conv = conv_model(kc.LipDist(1.0, 0.0))
    kc.bind(model)
    k0 = conv.kernel.numpy()
    model.compile(keras.optimizers.SGD(0.5), "mse")
    model.fit(np.random.randn(8, 8, 8, 3), np.random.randn(8, 8, 8, 4), verbose=0)
    np.testing.assert_array_equal(conv.kernel.numpy(), k0)


def test_training_keeps_every_layer_within_its_bounds():
    layers = [
        keras.layers.Conv2D(6, 3, padding="same", kernel_constraint=kc.LipDist(1.0, 3.0)),
        keras.layers.ReLU(),
        kc.CircularConv2D(6, 3, strides=2, kernel_constraint=kc.LipDist(0.8, 2.0)),
        keras.layers.ReLU(),
        keras.layers.Conv2D(
            6, 3, padding="valid", dilation_rate=2, kernel_constraint=kc.LipDist(0.9)
        ),
        keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_constraint=kc.LipDist(0.6, 1.0)),
    ]
    model = keras.Sequential([keras.Input((10, 10, 3)), *layers])
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.randn(96, 10, 10, 3).astype("float32")
    y = np.random.randint(0, 3, 96)
    for _ in range(3):
        model.fit(x, y, batch_size=16, verbose=0)
        for layer in model.layers:
            constraint = getattr(layer, "kernel_constraint", None)
            if constraint is None:
                continue
            assert kc.lipschitz(layer) <= constraint.lip * (1 + LIPSCHITZ_TOLERANCE), layer.name
            assert kc.distance(layer) <= constraint.dist * (1 + DISTANCE_TOLERANCE), layer.name


def test_every_projects_only_on_every_nth_step():
    model, conv = conv_model(kc.LipDist(0.5, every=3))
    kc.bind(model)
    model.compile(keras.optimizers.SGD(1.0), "mse")
    x, y = np.random.randn(4, 8, 8, 3), 10 * np.random.randn(4, 8, 8, 4)
    lips = []
    for _ in range(6):
        model.fit(x, y, batch_size=4, verbose=0)  # one step each
        lips.append(kc.lipschitz(conv))
    assert [lip <= 0.5 * (1 + LIPSCHITZ_TOLERANCE) for lip in lips] == [False, False, True] * 2
    assert int(conv.kernel_constraint.steps.numpy()) == 6


def test_direct_call_projects_and_is_deterministic():
    model, conv = conv_model(kc.LipDist(0.5, 1.0))
    kc.bind(model)
    perturb(conv)
    constraint = conv.kernel_constraint
    state = constraint.power_vectors.numpy()
    first = constraint(conv.kernel).numpy()
    constraint.power_vectors.assign(state)
    second = constraint(conv.kernel).numpy()
    np.testing.assert_array_equal(first, second)
    conv.kernel.assign(first)
    assert kc.lipschitz(conv) <= 0.5 * (1 + LIPSCHITZ_TOLERANCE)


def test_non_finite_kernel_raises_naming_the_kernel():
    model, conv = conv_model(kc.LipDist(0.5))
    kc.bind(model)
    kernel = conv.kernel.numpy()
    kernel[0, 0, 0, 0] = np.nan
    conv.kernel.assign(kernel)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        kc.project(model)


def test_config_round_trips_unbound_and_bound():
    constraint = kc.LipDist(0.5, 3.0, n_iter=2, every=15)
    clone = kc.LipDist.from_config(constraint.get_config())
    assert clone.get_config() == constraint.get_config()
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(constraint)
    )
    assert isinstance(restored, kc.LipDist) and restored.get_config() == constraint.get_config()
    assert kc.LipDist.from_config(kc.LipDist().get_config()).lip == math.inf

    model, conv = conv_model(kc.LipDist(0.5, 3.0))
    kc.bind(model)
    config = conv.kernel_constraint.get_config()
    bound = kc.LipDist.from_config(config)
    assert bound.get_config() == config
    # Deserialized state is not yet filled: it must not pass for bound.
    assert not bound.is_bound


def test_constraint_compiles_under_xla():
    """Keras turns XLA on by default on GPUs: the projection must compile."""
    model, conv = conv_model(kc.LipDist(0.5, 1.0, every=2))
    kc.bind(model)
    model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=True)
    model.fit(
        np.random.randn(8, 8, 8, 3), 10 * np.random.randn(8, 8, 8, 4), batch_size=4, verbose=0
    )
    assert int(conv.kernel_constraint.steps.numpy()) == 2
    assert kc.lipschitz(conv) <= 0.5 * (1 + LIPSCHITZ_TOLERANCE)
    assert kc.distance(conv) <= 1.0 * (1 + DISTANCE_TOLERANCE)


def test_circular_conv_is_certified_in_the_train_step_even_under_extreme_steps():
    """The exact FFT norm, not a tracked estimate: every step that projects
    leaves the kernel within the bound, however far the step went."""
    keras.utils.set_random_seed(0)
    conv = kc.CircularConv2D(4, 8, strides=2, use_bias=False, kernel_constraint=kc.LipDist(0.5))
    model = keras.Sequential([keras.Input((8, 8, 3)), conv])
    kc.bind(model)
    assert not conv.kernel_constraint.tracks_directions
    assert not hasattr(conv.kernel_constraint, "power_vectors")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    # With these steps the tracked estimate (fourier.EXACT_COST_LIMIT = -1)
    # lets the constant exceed 0.5 by 1.4e-3.
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 8, 8, 3)), 10 * rng.standard_normal((4, 4, 4, 4))
    for _ in range(5):
        model.fit(x, y, batch_size=4, verbose=0)
        assert kc.lipschitz(conv) <= 0.5 * (1 + 1e-5)


def test_exact_circular_norm_compiles_under_xla():
    conv = kc.CircularConv2D(
        4, 3, strides=2, use_bias=False, kernel_constraint=kc.LipDist(0.5, 1.0)
    )
    model = keras.Sequential([keras.Input((8, 8, 3)), conv])
    kc.bind(model)
    model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=True)
    model.fit(
        np.random.randn(8, 8, 8, 3), 10 * np.random.randn(8, 4, 4, 4), batch_size=4, verbose=0
    )
    assert kc.lipschitz(conv) <= 0.5 * (1 + 1e-5)
    assert kc.distance(conv) <= 1.0 * (1 + DISTANCE_TOLERANCE)
