"""kc.measure on models this project did not build: every number against an
independent oracle (the dense matrix of the layers' own map, numpy (2,1)
norms of the two weight sets, margins from the model's scores), the chain
rule for the bounds, and the errors a user can run into."""

import math

import keras
import numpy as np
import pytest

import keras_capacity as kc
from keras_capacity import bounds, measurement
from tests.conftest import operator_matrix

SHAPE = (10, 10, 3)


def plain_model():
    """The issue's model: a zero-padded stride-2 conv, BatchNorm, a dilated
    conv, Dense; biases everywhere, no LipDist."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(5, 3, strides=2, padding="same", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def toy_data(count=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *SHAPE)).astype(np.float32), rng.integers(0, 3, count)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The plain model trained a little, its initial weights saved two ways."""
    keras.utils.set_random_seed(3)
    model = plain_model()
    folder = tmp_path_factory.mktemp("init")
    model.save(folder / "init.keras")
    model.save_weights(folder / "init.weights.h5")
    initial = [np.array(w) for w in model.get_weights()]
    x, y = toy_data()
    model.compile(keras.optimizers.SGD(0.2), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    init_model = keras.models.clone_model(model)
    init_model.set_weights(initial)
    record = kc.measure(model, (x, y), toy_data(20, seed=1), init=init_model)
    return model, init_model, record, folder, (x, y)


def rows_by_name(record):
    return {row["name"]: row for row in record.layers}


def folded_scale(bn):
    variance = np.asarray(bn.moving_variance, np.float64)
    return np.asarray(bn.gamma, np.float64) / np.sqrt(variance + bn.epsilon)


def group_distance(kernel, initial):
    """(2,1): l2 over the input axis, summed over everything else."""
    return np.sqrt(((kernel - initial) ** 2).sum(axis=-2)).sum()


def test_layer_constants_are_the_norms_of_the_layers_own_maps(trained):
    model, _, record, _, _ = trained
    rows = rows_by_name(record)
    for name, shape in (("c1", SHAPE), ("c2", (5, 5, 5)), ("fc", (100,))):
        layer = model.get_layer(name)
        matrix = operator_matrix(layer, shape)
        expected = np.linalg.svd(matrix, compute_uv=False)[0]
        assert rows[name]["lipschitz"] == pytest.approx(expected, rel=1e-5), name
        assert rows[name]["lipschitz"] == pytest.approx(kc.lipschitz(layer), rel=1e-9)


def test_distances_are_the_group_norms_of_the_two_weight_sets(trained):
    model, init_model, record, _, _ = trained
    rows = rows_by_name(record)
    for name in ("c1", "c2", "fc"):
        kernel = np.asarray(model.get_layer(name).kernel, np.float64)
        initial = np.asarray(init_model.get_layer(name).kernel, np.float64)
        assert rows[name]["distance"] == pytest.approx(group_distance(kernel, initial), rel=1e-9)
        assert rows[name]["distance"] > 0


def test_batch_norm_is_folded_into_the_kernel_before_it(trained):
    """s_1 is the norm of x -> BN(conv(x)) (its linear part, from the layers
    themselves); b_1 is the distance of the folded kernels."""
    model, init_model, record, _, _ = trained
    conv, bn = model.get_layer("c1"), model.get_layer("bn1")
    assert record.bounds_reason is None
    assert rows_by_name(record)["c1"]["folded"] == "bn1"
    assert rows_by_name(record)["bn1"]["folded"] == "into c1"
    matrix = operator_matrix(lambda t: bn(conv(t), training=False), SHAPE)
    q = record.quantities
    assert q.lipschitz[0] == pytest.approx(np.linalg.svd(matrix, compute_uv=False)[0], rel=1e-5)
    kernel = np.asarray(conv.kernel, np.float64) * folded_scale(bn)
    initial = np.asarray(init_model.get_layer("c1").kernel, np.float64) * folded_scale(
        init_model.get_layer("bn1")
    )
    assert q.dist21[0] == pytest.approx(group_distance(kernel, initial), rel=1e-9)
    assert any("folded" in note for note in record.notes)
    assert any("bias" in note for note in record.notes)


def test_network_bound_holds_and_margins_are_the_models(trained):
    model, _, record, _, (x, y) = trained
    scores = np.asarray(model(x, training=False), np.float64)
    own = scores[np.arange(len(y)), y]
    others = np.where(np.eye(3, dtype=bool)[y], -np.inf, scores).max(axis=1)
    np.testing.assert_allclose(record.train_margins, own - others, rtol=1e-6, atol=1e-6)
    assert record.train_accuracy == pytest.approx(np.mean(own > others))  # a tie is an error
    # The folded bound is tighter than the product of the separate constants.
    rows = rows_by_name(record)
    product = math.prod(rows[name]["lipschitz"] for name in ("c1", "bn1", "c2", "fc"))
    assert record.network_lipschitz <= product * (1 + 1e-9)
    difference = np.asarray(model(x[:1] + 0.01 * x[1:2]) - model(x[:1]))
    assert np.linalg.norm(difference) <= record.network_lipschitz * 0.01 * np.linalg.norm(x[1])


def test_every_bound_is_given_with_initial_weights(trained):
    record = trained[2]
    assert not record.not_applicable
    for name, bound in record.test_error_bounds.items():
        assert bound is not None and bound.value > 0, name
    values = record.complexity_bounds(1.0)
    assert all(v is not None and v > 0 for v in values.values())


@pytest.mark.parametrize("kind", ["keras", "weights"])
def test_init_from_files_gives_the_same_distances(trained, kind):
    model, _, record, folder, data = trained
    path = folder / ("init.keras" if kind == "keras" else "init.weights.h5")
    again = kc.measure(model, data, init=str(path))
    for mine, theirs in zip(record.layers, again.layers, strict=True):
        if mine["kind"] == "BatchNormalization":
            assert mine["distance"] is None and theirs["distance"] is None
        else:
            assert mine["distance"] == pytest.approx(theirs["distance"], rel=1e-12)


def test_without_initial_weights_distances_are_unknown_never_zero(trained):
    model, _, _, _, data = trained
    record = kc.measure(model, data)
    assert all(row["distance"] is None for row in record.layers)
    needs_distance = {
        "ours_norms",
        "ours_params",
        "bartlett",
        "ledent_main",
        "ledent_fixed_constraints",
        "gouk_1inf",
        "gouk_fro",
    }
    assert set(record.not_applicable) == needs_distance
    for name in needs_distance:
        assert "distances to initialization are unknown" in record.not_applicable[name]
        assert record.test_error_bounds[name] is None
    given = set(bounds.BOUNDS) - needs_distance
    assert all(record.test_error_bounds[name].value > 0 for name in given)
    as_json = record.as_dict()
    assert as_json["test_error_bounds"]["ours_norms"]["value"] is None
    assert as_json["quantities"]["dist21"] is None


def test_a_mismatched_init_names_the_layer_and_both_shapes(trained):
    model, _, _, _, data = trained
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="c1")(inputs)
    wrong = keras.Model(inputs, x)
    with pytest.raises(ValueError, match=r"'c1' has kernel shape \(3, 3, 3, 5\).*\(3, 3, 3, 6\)"):
        kc.measure(model, data, init=wrong)
    renamed = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no layer named"):
        kc.measure(model, data, init=renamed)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kc.measure(model, data, init="/nonexistent/init.keras")


def test_a_bound_model_measures_from_its_k0():
    keras.utils.set_random_seed(1)
    model = kc.constrain(plain_model(), lip=2.0, dist=5.0)
    for layer in (model.get_layer("c2"), model.get_layer("fc")):
        layer.kernel.assign(layer.kernel * 1.3)
    record = kc.measure(model, toy_data())
    rows = rows_by_name(record)
    for name in ("c1", "c2", "fc"):
        assert rows[name]["distance"] == pytest.approx(kc.distance(model.get_layer(name)))
    assert rows["c2"]["distance"] > 0 and rows["c1"]["distance"] == pytest.approx(0, abs=1e-12)


def residual_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(2, 3, padding="same", name="c1")(inputs)
    x = keras.layers.Add(name="skip")([x, inputs])
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def pooled_model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="c1")(inputs)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def preactivation_model():
    """BatchNorm after a ReLU, right before a conv: folded into its input."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(3, 3, padding="valid", name="c2")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def test_a_residual_network_gets_no_chain_bound_but_its_lipschitz_bound():
    keras.utils.set_random_seed(0)
    model = residual_model()
    x = np.random.default_rng(0).standard_normal((16, 6, 6, 2)).astype(np.float32)
    record = kc.measure(model, (x, np.zeros(16, int)), init=model)
    assert "'skip'" in record.bounds_reason and "not a chain" in record.bounds_reason
    assert record.not_applicable["lin"] == record.bounds_reason
    assert record.quantities is None
    assert set(record.not_applicable) == set(bounds.BOUNDS)
    assert all(bound is None for bound in record.test_error_bounds.values())
    rows = rows_by_name(record)
    expected = (rows["c1"]["lipschitz"] + 1.0) * rows["fc"]["lipschitz"]
    assert record.network_lipschitz == pytest.approx(expected, rel=1e-9)


def test_an_overlapping_pool_between_kernels_is_named():
    record = kc.measure(pooled_model(), (np.ones((4, 8, 8, 2), np.float32), np.zeros(4, int)))
    assert "'pool'" in record.bounds_reason and "> 1" in record.bounds_reason


def test_batch_norm_before_a_kernel_is_folded_into_its_input_channels():
    keras.utils.set_random_seed(2)
    model = preactivation_model()
    bn = model.get_layer("bn")
    bn.gamma.assign(np.array([0.5, 2.0, 1.5], np.float32))
    bn.moving_variance.assign(np.array([4.0, 0.25, 1.0], np.float32))
    x = np.random.default_rng(0).standard_normal((16, 6, 6, 2)).astype(np.float32)
    record = kc.measure(model, (x, np.zeros(16, int)))
    assert record.bounds_reason is None
    assert rows_by_name(record)["c2"]["folded"] == "bn"
    conv = model.get_layer("c2")
    matrix = operator_matrix(lambda t: conv(bn(t, training=False)), (6, 6, 3))
    expected = np.linalg.svd(matrix, compute_uv=False)[0]
    assert record.quantities.lipschitz[1] == pytest.approx(expected, rel=1e-5)
    # The data terms of c2 are measured on the BatchNorm's input.
    activations = keras.Model(model.inputs, bn.input)(x)
    patches = np.asarray(activations, np.float64) ** 2
    widest = max(
        patches[:, i : i + 3, j : j + 3].sum(axis=(1, 2, 3)).max()
        for i in range(4)
        for j in range(4)
    )
    assert record.quantities.patch_norms[1] == pytest.approx(np.sqrt(widest), rel=1e-5)


def test_bad_data_is_one_clear_error(trained):
    model, *_ = trained
    x, y = toy_data(8)
    with pytest.raises(ValueError, match=r"inputs of shape \(10, 10, 4\).*takes \(10, 10, 3\)"):
        kc.measure(model, (np.zeros((8, 10, 10, 4), np.float32), y))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        kc.measure(model, (x, y + 5))
    with pytest.raises(ValueError, match="no Dense or Conv2D"):
        kc.measure(keras.Sequential([keras.Input((4,)), keras.layers.ReLU()]), (x, y))


def test_all_zero_training_inputs_make_the_bounds_not_applicable(trained):
    model, *_ = trained
    zeros = np.zeros((4, *SHAPE), np.float32)
    record = kc.measure(model, (zeros, np.zeros(4, int)))
    assert "all zero" in record.bounds_reason and record.quantities is None
    assert set(record.not_applicable) == set(bounds.BOUNDS)


def test_a_tf_data_pipeline_gives_the_same_record(trained):
    import tensorflow as tf

    model, init_model, record, _, (x, y) = trained
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    again = measurement.measure(model, dataset, init=init_model)
    np.testing.assert_allclose(again.train_margins, record.train_margins, rtol=1e-6)
    assert again.quantities.data_norm == pytest.approx(record.quantities.data_norm, rel=1e-9)
    assert again.quantities.patch_norms == pytest.approx(record.quantities.patch_norms, rel=1e-6)
