"""Bounds: measured quantities against numpy, each bound against a float64
numpy formula written here, and the properties the module promises."""

import math
import random
import warnings

import keras
import numpy as np
import pytest
from scipy.special import zeta

import keras_capacity as kc
from keras_capacity import bounds
from tests.conftest import operator_matrix


def small_network():
    """conv 3x3/2 (8x8x2 -> 4x4x4), ReLU, conv 3x3/2 (-> 2x2x4), ReLU,
    flatten, Dense to 3 classes; every kernel moved away from K0."""
    model = keras.Sequential([
        keras.Input((8, 8, 2)),
        kc.CircularConv2D(4, 3, strides=2, use_bias=False, name="c1",
                          kernel_constraint=kc.LipDist()),
        keras.layers.ReLU(),
        kc.CircularConv2D(4, 3, strides=2, use_bias=False, name="c2",
                          kernel_constraint=kc.LipDist()),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(3, use_bias=False, name="fc", kernel_constraint=kc.LipDist()),
    ])
    kc.bind(model)
    rng = np.random.default_rng(0)
    for layer in (model.get_layer("c1"), model.get_layer("c2"), model.get_layer("fc")):
        layer.kernel.assign(layer.kernel.numpy() + 0.2 * rng.standard_normal(layer.kernel.shape))
    return model


def data(model, count=40):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((count, 8, 8, 2)).astype(np.float32)
    scores = np.asarray(model(x))
    return x, scores.argmax(axis=1)  # labels the network gets right: gamma > 0


def wrap_patches_max_norm(activation, kernel, stride):
    """Numpy loop over every patch a circular conv sees."""
    size = activation.shape[1]
    padded = np.pad(activation, [(0, 0), ((kernel - 1) // 2, kernel // 2),
                                 ((kernel - 1) // 2, kernel // 2), (0, 0)], mode="wrap")
    best = 0.0
    for i in range(0, size, stride):
        for j in range(0, size, stride):
            patch = padded[:, i:i + kernel, j:j + kernel]
            best = max(best, np.sqrt((patch.astype(np.float64) ** 2).sum(axis=(1, 2, 3))).max())
    return best


def test_quantities_against_numpy():
    model = small_network()
    x, y = data(model)
    q = bounds.measure_quantities(model, x, y, batch_size=16)
    x64 = x.astype(np.float64)
    assert q.n == 40 and q.num_classes == 3 and q.depth == 3
    assert q.data_norm == pytest.approx(np.linalg.norm(x64), rel=1e-12)
    assert q.data_max_abs == pytest.approx(np.abs(x64).max(), rel=1e-12)
    assert q.data_max_coordinate_norm == pytest.approx(
        np.linalg.norm(x64.reshape(40, -1), axis=0).max(), rel=1e-12)
    scores = np.asarray(model(x), np.float64)
    own = scores[np.arange(40), y]
    scores[np.arange(40), y] = -np.inf
    assert q.margin == pytest.approx((own - scores.max(axis=1)).min(), rel=1e-5)
    shapes = {"c1": (8, 8, 2), "c2": (4, 4, 4), "fc": (16,)}
    for i, name in enumerate(("c1", "c2", "fc")):
        layer = model.get_layer(name)
        k = layer.kernel.numpy().astype(np.float64)
        k0 = layer.kernel_constraint.initial_kernel.numpy().astype(np.float64)
        k4, d4 = (k, k - k0) if k.ndim == 4 else (k[None, None], (k - k0)[None, None])
        assert q.lipschitz[i] == pytest.approx(
            np.linalg.norm(operator_matrix(layer, shapes[name]), 2), rel=1e-5)
        assert q.dist21[i] == pytest.approx(np.sqrt((d4 ** 2).sum(axis=2)).sum(), rel=1e-10)
        assert q.filter_dist21[i] == pytest.approx(
            sum(np.linalg.norm(d4[..., o]) for o in range(d4.shape[-1])), rel=1e-10)
        assert q.norm_fro[i] == pytest.approx(np.sqrt((k ** 2).sum()), rel=1e-10)
        assert q.norm_1inf[i] == pytest.approx(
            max(np.abs(k4[..., o]).sum() for o in range(k4.shape[-1])), rel=1e-10)
        assert q.dist_1inf[i] == pytest.approx(
            max(np.abs(d4[..., o]).sum() for o in range(d4.shape[-1])), rel=1e-10)
        assert q.filter_norm_max[i] == pytest.approx(
            max(np.linalg.norm(k4[..., o]) for o in range(k4.shape[-1])), rel=1e-10)
    assert (q.input_sizes, q.kernel_sizes, q.strides, q.in_channels) == \
        ((8, 4, 1), (3, 3, 1), (2, 2, 1), (2, 4, 16))
    assert q.params == (3 * 3 * 2 * 4, 3 * 3 * 4 * 4, 16 * 3)
    inner = keras.Model(model.inputs[0], model.get_layer("c2").input)
    assert q.patch_norms[0] == pytest.approx(wrap_patches_max_norm(x, 3, 2), rel=1e-6)
    assert q.patch_norms[1] == pytest.approx(
        wrap_patches_max_norm(np.asarray(inner(x)), 3, 2), rel=1e-6)
    flat = np.asarray(keras.Model(model.inputs[0], model.get_layer("fc").input)(x), np.float64)
    assert q.patch_norms[2] == pytest.approx(np.linalg.norm(flat, axis=1).max(), rel=1e-6)


# Float64 numpy formulas from the papers (as the reference states them).

def reference_bounds(q, g):
    n, L, K = q.n, q.depth, q.num_classes
    s, b = np.array(q.lipschitz), np.array(q.dist21)
    W = np.array(q.params, float)
    d, k, t, c = (np.array(v, float) for v in (q.input_sizes, q.kernel_sizes, q.strides,
                                               q.in_channels))
    fro, dfro = np.array(q.norm_fro), np.array(q.dist_fro)
    n1, d1 = np.array(q.norm_1inf), np.array(q.dist_1inf)
    d_next = np.append(d[1:], 1)
    C = 4 / g * q.data_norm / np.sqrt(n) * s.prod() * b / s
    out = {}
    out["ours_norms"] = 4 / n + 12 * np.log(n) / np.sqrt(n) * np.sqrt(np.log(2 * W.max())) \
        * (C ** (2 / 3)).sum() ** 1.5
    x = (L * C) ** 2
    psi = zeta(1.5, 1) ** (1 / 3) * zeta(1.5, 1 + 1 / x)
    out["ours_params"] = 12 / np.sqrt(n) * np.sqrt((2 * W * (np.log(1 + x) + psi)).sum())
    Cb = C * d_next ** 2 / k
    barW = (W * (d * d_next / k) ** 2).max()
    out["bartlett"] = 4 / n + 12 * np.log(n) / np.sqrt(n) * np.sqrt(np.log(2 * barW)) \
        * (Cb ** (2 / 3)).sum() ** 1.5
    a = np.array(q.filter_dist21)
    a[-1] = fro[-1]
    bl = np.append(np.array(q.patch_norms), g)
    rho = []
    for i in range(L - 1):
        rho.append(max(s[i + 1:j + 1].prod() / bl[j + 1] * d[i + 1] for j in range(i + 1, L)))
    rho.append(bl[-2] / bl[-1])
    m_out = np.append(c[1:], K)
    O = d_next ** 2

    def ledent(r, factor):
        R = (r ** (2 / 3)).sum() ** 1.5
        return 4 / n + 768 * R * np.sqrt(np.log2(32 * (r * O * m_out).max() * n ** 2
                                                 + 7 * (O * m_out).max() * n)) * factor

    out["ledent_main"] = ledent(bl[:-1] * np.array(rho) * a, np.log(n) / np.sqrt(n))
    lips = s.copy()
    lips[-1] = q.filter_norm_max[-1]
    out["ledent_fixed_constraints"] = ledent(
        q.patch_norms[0] / g * lips.prod() * a / lips * d_next, 1.0)
    out["lin"] = 16 * (2 / g * q.data_norm / np.sqrt(n) * s.prod() * L ** 2
                       * (W ** 2 * d / t * fro / s).sum()) ** 0.25 / np.sqrt(n)
    D = c[0] * d[0] ** 2
    out["neyshabur_1inf"] = 2 ** L * K * n1.prod() * np.sqrt(np.log(2 * D)) * q.data_max_abs / np.sqrt(n)
    out["golowich_1inf"] = 2 * K * n1.prod() * np.sqrt(L + 1 + np.log(D)) \
        * np.sqrt(q.data_max_coordinate_norm / n) / np.sqrt(n)
    out["gouk_1inf"] = 2 ** (L + 1) * K * n1.prod() * np.log(D) * (d1 / n1).sum() \
        * q.data_max_abs / np.sqrt(n)
    P = (fro * d / t).prod()
    out["neyshabur_fro"] = 2 ** (L - 1) * K * q.data_norm / np.sqrt(2 * n) * P / np.sqrt(n)
    out["golowich_fro"] = K * q.data_norm / np.sqrt(n) * P * (1 + np.sqrt(2 * np.log(2) * L)) / np.sqrt(n)
    prefix = np.cumprod(d * np.sqrt(c))
    out["gouk_fro"] = 2 ** (L + 0.5) * K * q.data_norm / np.sqrt(n) \
        * (d ** 2 / t * np.sqrt(c) * fro).prod() * (dfro / fro / prefix).sum() / np.sqrt(n)
    return out


@pytest.fixture(scope="module")
def quantities():
    keras.utils.set_random_seed(7)
    model = small_network()
    x, y = data(model)
    return bounds.measure_quantities(model, x, y), model, x, y


def test_every_bound_against_numpy(quantities):
    q = quantities[0]
    ours, expected = bounds.all_bounds(q), reference_bounds(q, q.margin)
    assert list(ours) == list(bounds.BOUNDS) and len(ours) == 12
    for name in ours:
        assert np.isfinite(ours[name]) and ours[name] > 0, name
        assert ours[name] == pytest.approx(expected[name], rel=1e-9), name


def test_order_does_not_matter_and_nothing_is_mutated(quantities):
    q = quantities[0]
    first = bounds.all_bounds(q)
    names = list(bounds.BOUNDS)
    random.Random(0).shuffle(names)
    again = {name: bounds.BOUNDS[name](q, q.margin) for name in names}
    assert again == first


def test_scaling_the_data_scales_its_norm(quantities):
    q, model, x, y = quantities
    scaled = bounds.measure_quantities(model, 3 * x, y)
    assert scaled.data_norm == pytest.approx(3 * q.data_norm, rel=1e-6)  # float32 inputs
    assert scaled.data_max_abs == pytest.approx(3 * q.data_max_abs, rel=1e-6)


def test_distance_bounds_fall_at_initialization(quantities):
    q = quantities[0]
    at_init = bounds.Quantities(**{
        **q.__dict__, "dist21": (0.0,) * 3, "filter_dist21": (0.0,) * 3,
        "dist_fro": (0.0,) * 3, "dist_1inf": (0.0,) * 3})
    before, after = bounds.all_bounds(q), bounds.all_bounds(at_init)
    for name in ("ours_norms", "ours_params", "bartlett", "gouk_1inf", "gouk_fro"):
        assert after[name] < before[name], name


def test_non_positive_margin_warns_and_gives_inf(quantities):
    q = quantities[0]
    with pytest.warns(RuntimeWarning, match="not positive"):
        values = bounds.all_bounds(q, gamma=0.0)
    assert values["ours_norms"] == math.inf and values["lin"] == math.inf
    assert np.isfinite(values["neyshabur_fro"])  # margin-free bounds are unaffected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves = bounds.bounds_over_margins(q, [0.5, 1.0, 2.0])
    assert curves["ours_norms"][0] > curves["ours_norms"][1] > curves["ours_norms"][2]
    assert len(set(curves["golowich_fro"])) == 1


def test_needs_bound_kernels():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="bound LipDist"):
        bounds.measure_quantities(model, np.zeros((2, 4)), np.zeros(2, int))


def test_certified_accuracy_and_its_guarantee():
    from keras_capacity.training import report

    shares = report.certified_accuracy([-1.0, 0.5, 2.0, 4.0], lipschitz=2.0, radii=(0.0, 0.5, 1.0, 2.0))
    # radii m / (sqrt(2) L): 0.177, 0.707, 1.414; the misclassified point never counts.
    assert shares == {0.0: 0.75, 0.5: 0.5, 1.0: 0.25, 2.0: 0.0}
    keras.utils.set_random_seed(3)
    model = small_network()
    x, y = data(model, count=20)
    scores = np.asarray(model(x), np.float64)
    top2 = np.sort(scores, axis=1)
    margin = top2[:, -1] - top2[:, -2]
    lip = kc.network_lipschitz(model)
    rng = np.random.default_rng(0)
    for i in range(20):  # any perturbation inside the certified radius keeps the class
        direction = rng.standard_normal((50, 8, 8, 2))
        direction /= np.linalg.norm(direction.reshape(50, -1), axis=1)[:, None, None, None]
        moved = x[i] + 0.999 * margin[i] / (np.sqrt(2) * lip) * direction
        assert (np.asarray(model(moved.astype(np.float32))).argmax(axis=1) == y[i]).all()
