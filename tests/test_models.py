"""The paper's models: shapes, parameter counts, constraints, training,
saving."""

import math

import keras
import numpy as np
import pytest

import keras_capacity as kc
from keras_capacity import constraint_values, models, network

LIP = (2.0, 0.8, 1.4, 1.0)
DIST = (90, 90, 90, 0)


def conv_params(convs):
    """Reference parameter count of circular 3x3 convs ``(in, out, map size)``
    whose kernels shrink to the map (the reference crops at first use)."""
    return sum(min(k, size) ** 2 * cin * cout for k, cin, cout, size in convs)


def reference_convnet_params(depth, channels, classes):
    convs, size, cin = [], 32, 3
    for _block in range(5):
        convs.append((3, cin, channels, size))  # stride 2 (or pool after)
        size //= 2
        cin = channels
        convs += [(3, channels, channels, size)] * (depth - 1)
    return conv_params(convs) + channels * classes


def reference_resnet_params(classes, size=32):
    size //= 4  # two 3x3/2 max-pools after the 7x7 stem
    convs, cin = [(7, 3, 64, 4 * size)], 64
    for stage, planes in enumerate((64, 128, 256, 512)):
        for block in range(2):
            convs.append((3, cin, planes, size))
            if stage and not block:
                size //= 2
            convs.append((3, planes, planes, size))
            cin = planes
    return conv_params(convs) + 512 * classes


def reference_resnet_batch_norm_channels():
    """The channels the reference's pre-activation ResNet-18 normalizes:
    after the stem; in every block before each of its two activations (the
    block's input, then its first conv's output); and after the pooling
    shortcut of each downsampling block (two pools of the input,
    concatenated: twice the input's channels). Each BatchNorm holds four
    numbers per channel (scale and offset trained, mean and variance not)."""
    channels, cin = [64], 64
    for stage, planes in enumerate((64, 128, 256, 512)):
        for block in range(2):
            channels += [cin, planes]
            if stage and not block:
                channels.append(2 * cin)
            cin = planes
    return sum(channels)


@pytest.mark.parametrize(
    "depth,builder", [(1, models.simple_convnet6), (2, models.simple_convnet11)]
)
@pytest.mark.parametrize("strides", [True, False])
def test_convnet_shape_and_parameters(depth, builder, strides):
    model = builder(10, n_channels=512, strides=strides)
    assert model.output_shape == (None, 10)
    assert model.count_params() == reference_convnet_params(depth, 512, 10)


def test_documented_parameter_counts():
    assert models.simple_convnet6(10).count_params() == 8_145_408
    assert models.simple_convnet11(10).count_params() == 16_534_016
    assert models.preact_resnet18(10).count_params() == 3_070_144 == reference_resnet_params(10)
    assert models.preact_resnet18(
        200, input_shape=(64, 64, 3)
    ).count_params() == reference_resnet_params(200, size=64)
    with_bn = models.preact_resnet18(10, batch_norm=True)
    normalized = reference_resnet_batch_norm_channels()
    assert with_bn.count_params() - 3_070_144 == 4 * normalized == 17_408
    trainable = sum(int(np.prod(w.shape)) for w in with_bn.trainable_weights)
    without = models.preact_resnet18(10).trainable_weights
    assert trainable - sum(int(np.prod(w.shape)) for w in without) == 2 * normalized


def lipdists(model):
    return {layer.name: c for layer, c in kc.binding.constrained_layers(model)}


def test_convnet_constraint_lists_and_heads():
    conv_head = models.simple_convnet11(10, n_channels=16, lip=LIP, dist=(5, 6, 7, 8))
    found = lipdists(conv_head)
    assert (found["block1_conv1"].lip, found["block1_conv1"].dist) == (2.0, 5)
    assert all(
        (c.lip, c.dist) == (0.8, 6)
        for n, c in found.items()
        if n.startswith("block") and n != "block1_conv1"
    )
    assert (found["classifier"].lip, found["classifier"].dist) == (1.0, 8)
    assert len(found) == 11
    simplex = models.simple_convnet6(10, n_channels=16, simplex=True, lip=LIP, dist=DIST)
    head = simplex.get_layer("classifier")
    assert isinstance(head, kc.SimplexClassifier) and head.lip == 1.0
    dense = models.simple_convnet6(10, n_channels=16, simplex=True, lip=LIP, dist=(90, 90, 90, 3))
    assert type(dense.get_layer("classifier")) is keras.layers.Dense
    assert lipdists(dense)["classifier"].dist == 3


def test_resnet_constraint_lists():
    model = models.preact_resnet18(10, lip=LIP, dist=DIST)
    found = lipdists(model)
    assert (found["conv1"].lip, found["conv1"].dist) == (2.0, 90)
    inner = [c for n, c in found.items() if n != "conv1"]
    assert len(inner) == 16 and all((c.lip, c.dist) == (0.8, 90) for c in inner)
    shortcuts = [layer for layer in model.layers if isinstance(layer, kc.PoolingShortcut)]
    assert len(shortcuts) == 3 and all(s.lipschitz_constant == 1.4 for s in shortcuts)
    assert isinstance(model.get_layer("classifier"), kc.SimplexClassifier)
    dense = models.preact_resnet18(10, lip=LIP, dist=(90, 90, 90, 5))
    assert lipdists(dense)["classifier"].dist == 5


@pytest.mark.parametrize("bad", [(1, 2, 3), (1, 2, 3, 4, 5), (1, -2, 3, 4), (1, "x", 3, 4), 5])
def test_bad_constraint_lists(bad):
    with pytest.raises(ValueError, match="lip"):
        models.simple_convnet6(10, n_channels=8, lip=bad)


def test_unconstrained_spellings():
    spellings = (-1, None, math.inf, 0)
    assert constraint_values.constraint_list("dist", spellings, "dist") == (math.inf,) * 3 + (0.0,)
    assert constraint_values.constraint_list("lip", "-1,inf,None,2", "lip") == (math.inf,) * 3 + (
        2.0,
    )


@pytest.mark.parametrize("bad", [(0, 1, 1, 1), "1,0,1,1"])
def test_a_zero_lipschitz_bound_is_refused(bad):
    with pytest.raises(ValueError, match=r"must be > 0"):
        models.simple_convnet6(10, n_channels=8, lip=bad)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="32x32"):
        models.simple_convnet6(10, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="num_classes"):
        models.preact_resnet18(1)


def assert_constraints_hold(model):
    rows = network.layer_table(model)
    for row in rows:
        assert row["holds"], row


@pytest.mark.parametrize(
    "builder,kwargs",
    [
        (models.simple_convnet6, dict(n_channels=16, simplex=True)),
        (models.simple_convnet11, dict(n_channels=8, strides=False)),
        (models.preact_resnet18, dict(batch_norm=True)),
    ],
)
def test_fit_keeps_constraints_and_saves(builder, kwargs, tmp_path):
    lip, dist = (1.5, 0.8, 1.4, 1.0), (3.0, 2.0, 90, 0)
    # 16x16 images: every stage, with a quarter of the Fourier blocks of 32x32.
    model = builder(10, lip=lip, dist=dist, input_shape=(16, 16, 3), **kwargs)
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = np.random.randn(16, 16, 16, 3).astype(np.float32)
    y = np.random.randint(0, 10, 16)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert_constraints_hold(model)
    rows = [r for r in network.layer_table(model) if r["distance"] is not None and r["params"]]
    assert max(r["distance"] for r in rows) > 0  # trained
    assert any(r["lipschitz"] > 0.99 * r["lip_constraint"] for r in rows)  # a bound is active
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    for mine, theirs in zip(network.layer_table(model), network.layer_table(loaded), strict=False):
        assert mine == pytest.approx(theirs)
