"""Bounds: measured quantities against numpy, each bound against a float64
numpy formula written here, and the properties the module promises."""

import dataclasses
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
    model = keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            kc.CircularConv2D(
                4, 3, strides=2, use_bias=False, name="c1", kernel_constraint=kc.LipDist()
            ),
            keras.layers.ReLU(),
            kc.CircularConv2D(
                4, 3, strides=2, use_bias=False, name="c2", kernel_constraint=kc.LipDist()
            ),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(3, use_bias=False, name="fc", kernel_constraint=kc.LipDist()),
        ]
    )
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
    padded = np.pad(
        activation,
        [(0, 0), ((kernel - 1) // 2, kernel // 2), ((kernel - 1) // 2, kernel // 2), (0, 0)],
        mode="wrap",
    )
    best = 0.0
    for i in range(0, size, stride):
        for j in range(0, size, stride):
            patch = padded[:, i : i + kernel, j : j + kernel]
            best = max(best, np.sqrt((patch.astype(np.float64) ** 2).sum(axis=(1, 2, 3))).max())
    return best


# Each layer's input shape in small_network.
SHAPES = {"c1": (8, 8, 2), "c2": (4, 4, 4), "fc": (16,)}


def patch_norms(model, x):
    """The largest input-patch norm of every layer, by a numpy loop over
    the patches of each layer's input (the Dense layer's patch is its
    whole input)."""
    inputs = [
        np.asarray(keras.Model(model.inputs[0], model.get_layer(name).input)(x), np.float64)
        for name in SHAPES
    ]
    return np.array(
        [
            wrap_patches_max_norm(inputs[0], 3, 2),
            wrap_patches_max_norm(inputs[1], 3, 2),
            np.linalg.norm(inputs[2], axis=1).max(),
        ]
    )


def test_quantities_against_numpy():
    model = small_network()
    x, y = data(model)
    q = bounds.measure_quantities(model, x, y, batch_size=16)
    x64 = x.astype(np.float64)
    assert q.n == 40 and q.num_classes == 3 and q.depth == 3
    assert q.data_norm == pytest.approx(np.linalg.norm(x64), rel=1e-12)
    assert q.data_max_abs == pytest.approx(np.abs(x64).max(), rel=1e-12)
    assert q.data_max_coordinate_norm == pytest.approx(
        np.linalg.norm(x64.reshape(40, -1), axis=0).max(), rel=1e-12
    )
    scores = np.asarray(model(x), np.float64)
    own = scores[np.arange(40), y]
    scores[np.arange(40), y] = -np.inf
    assert q.margin == pytest.approx((own - scores.max(axis=1)).min(), rel=1e-5)
    for i, (name, shape) in enumerate(SHAPES.items()):
        layer = model.get_layer(name)
        k = layer.kernel.numpy().astype(np.float64)
        k0 = layer.kernel_constraint.initial_kernel.numpy().astype(np.float64)
        k4, d4 = (k, k - k0) if k.ndim == 4 else (k[None, None], (k - k0)[None, None])
        assert q.lipschitz[i] == pytest.approx(
            np.linalg.norm(operator_matrix(layer, shape), 2), rel=1e-5
        )
        assert q.dist21[i] == pytest.approx(np.sqrt((d4**2).sum(axis=2)).sum(), rel=1e-10)
        assert q.filter_dist21[i] == pytest.approx(
            sum(np.linalg.norm(d4[..., o]) for o in range(d4.shape[-1])), rel=1e-10
        )
        assert q.norm_fro[i] == pytest.approx(np.sqrt((k**2).sum()), rel=1e-10)
        assert q.norm_1inf[i] == pytest.approx(
            max(np.abs(k4[..., o]).sum() for o in range(k4.shape[-1])), rel=1e-10
        )
        assert q.dist_1inf[i] == pytest.approx(
            max(np.abs(d4[..., o]).sum() for o in range(d4.shape[-1])), rel=1e-10
        )
        assert q.filter_norm_max[i] == pytest.approx(
            max(np.linalg.norm(k4[..., o]) for o in range(k4.shape[-1])), rel=1e-10
        )
    assert (q.input_sizes, q.kernel_sizes, q.strides, q.in_channels) == (
        (8, 4, 1),
        (3, 3, 1),
        (2, 2, 1),
        (2, 4, 16),
    )
    assert q.params == (3 * 3 * 2 * 4, 3 * 3 * 4 * 4, 16 * 3)
    np.testing.assert_allclose(q.patch_norms, patch_norms(model, x), rtol=1e-6)


# The reference's code (bounds/rademacher_bounds.py), transcribed to numpy
# with its own names: the oracle for fidelity, not our formulas.


def reference_record(model, x, y):
    """The reference's Bounds attributes, computed here from the model's
    weights in PyTorch's layout (out, in, kh, kw), as its __init__ does."""
    layers = [model.get_layer(name) for name in ("c1", "c2", "fc")]
    weights, deltas = [], []
    for layer in layers:
        k = layer.kernel.numpy().astype(np.float64)
        k0 = layer.kernel_constraint.initial_kernel.numpy().astype(np.float64)
        if k.ndim == 2:
            k, k0 = k[None, None], k0[None, None]
        weights.append(np.transpose(k, (3, 2, 0, 1)))
        deltas.append(np.transpose(k - k0, (3, 2, 0, 1)))
    x64 = np.transpose(x.astype(np.float64), (0, 3, 1, 2))  # (n, c, h, w)
    scores = np.asarray(model(x), np.float64)
    own = scores[np.arange(len(y)), y]
    scores[np.arange(len(y)), y] = -np.inf
    return dict(
        n=len(x),
        classes=3,
        data_norm=np.linalg.norm(x64),
        margin=(own - scores.max(1)).min(),
        data_max_abs=np.abs(x64).max(),
        data_max_coordinate_norm=np.linalg.norm(x64, axis=0).max(),
        lip=np.array(
            [
                np.linalg.norm(operator_matrix(layer, shape), 2)
                for layer, shape in zip(layers, SHAPES.values(), strict=True)
            ]
        ),
        norm22=np.array([np.linalg.norm(w) for w in weights]),
        dist22=np.array([np.linalg.norm(d) for d in deltas]),
        dist21=np.array([np.linalg.norm(d, axis=1).sum() for d in deltas]),
        matrix_dist21=np.array(
            [np.linalg.norm(d.reshape(len(d), -1), axis=1).sum() for d in deltas]
        ),
        norm1inf=np.array([np.abs(w).reshape(len(w), -1).sum(1).max() for w in weights]),
        dist1inf=np.array([np.abs(d).reshape(len(d), -1).sum(1).max() for d in deltas]),
        filter_norm_max=np.array(
            [np.linalg.norm(w.reshape(len(w), -1), axis=1).max() for w in weights]
        ),
        params=np.array([w.size for w in weights], float),
        inp_dims=np.array([8, 4, 1]),
        kernel_sizes=np.array([3, 3, 1]),
        strides=np.array([2, 2, 1]),
        in_channels=np.array([2, 4, 16]),
    )


def reference_bounds(r, margin):
    """Each method of the reference's Bounds class at ``margin``."""
    n, L, classes = r["n"], len(r["lip"]), r["classes"]
    lip, params = r["lip"], r["params"]
    inp_dims, kernel_sizes, strides, in_channels = (
        r[k].astype(float) for k in ("inp_dims", "kernel_sizes", "strides", "in_channels")
    )
    out = {}
    C_i = 4 / margin * r["data_norm"] / np.sqrt(n) * lip.prod() * r["dist21"] / lip
    out["ours_norms"] = 4 / n + 12 * np.log(n) / np.sqrt(n) * np.sqrt(np.log(2 * params.max())) * (
        C_i ** (2 / 3)
    ).sum() ** (3 / 2)
    LC_i = L * C_i
    psi = lambda x: zeta(3 / 2, 1) ** (1 / 3) * zeta(3 / 2, 1 + 1 / x**2)  # noqa: E731
    out["ours_params"] = (
        12 / np.sqrt(n) * np.sqrt((2 * params * (np.log(1 + LC_i**2) + psi(LC_i**2))).sum())
    )
    d_i = np.append(inp_dims, 1)
    C_b = (
        4
        / margin
        * r["data_norm"]
        / np.sqrt(n)
        * lip.prod()
        * d_i[1:] ** 2
        / kernel_sizes
        * r["dist21"]
        / lip
    )
    barW = (params * (d_i[:-1] * d_i[1:] / kernel_sizes) ** 2).max()
    out["bartlett"] = 4 / n + 12 * np.log(n) / np.sqrt(n) * np.sqrt(np.log(2 * barW)) * (
        C_b ** (2 / 3)
    ).sum() ** (3 / 2)
    c_i = np.append(in_channels, classes)
    O_l, m_l = d_i[1:] ** 2, c_i[1:]
    # ledent_main: the classifier's distance is its Frobenius distance to init.
    dists = r["matrix_dist21"].copy()
    dists[-1] = r["dist22"][-1]
    b_l = np.append(r["b_l"], margin)
    rho_lplus = [
        max(np.prod(lip[j + 1 : i + 1]) / b_l[i + 1] * d_i[j + 1] for i in range(j + 1, L))
        for j in range(L - 1)
    ] + [b_l[-2] / b_l[-1]]
    r_i = b_l[:-1] * np.array(rho_lplus) * dists
    R = (r_i ** (2 / 3)).sum() ** (3 / 2)
    out["ledent_main"] = 4 / n + 768 * R * np.sqrt(
        np.log2(32 * (r_i * O_l * m_l).max() * n**2 + 7 * (O_l * m_l).max() * n)
    ) * np.log(n) / np.sqrt(n)
    # ledent_fixed_constraints: the classifier's weight norm and largest filter norm.
    dists = r["matrix_dist21"].copy()
    dists[-1] = r["norm22"][-1]
    lips = lip.copy()
    lips[-1] = r["filter_norm_max"][-1]
    r_i = r["b_l"][0] / margin * np.prod(lips) * dists / lips * d_i[1:]
    R = (r_i ** (2 / 3)).sum() ** (3 / 2)
    out["ledent_fixed_constraints"] = 4 / n + 768 * R * np.sqrt(
        np.log2(32 * (r_i * O_l * m_l).max() * n**2 + 7 * (O_l * m_l).max() * n)
    )
    root = 2 / margin * r["data_norm"] / np.sqrt(n) * lip.prod() * L**2
    root *= (params**2 * inp_dims / strides * r["norm22"] / lip).sum()
    out["lin"] = 16 * root ** (1 / 4) / np.sqrt(n)
    dim = in_channels[0] * inp_dims[0] ** 2
    out["neyshabur_1inf"] = (
        2**L
        * classes
        * r["norm1inf"].prod()
        * np.sqrt(np.log(2 * dim))
        * r["data_max_abs"]
        / np.sqrt(n)
    )
    out["golowich_1inf"] = (
        2
        * classes
        * r["norm1inf"].prod()
        * np.sqrt(L + 1 + np.log(dim))
        * np.sqrt(r["data_max_coordinate_norm"] / n)
        / np.sqrt(n)
    )
    out["gouk_1inf"] = (
        2 ** (L + 1)
        * classes
        * r["norm1inf"].prod()
        * np.log(dim)
        * (r["dist1inf"] / r["norm1inf"]).sum()
        * r["data_max_abs"]
        / np.sqrt(n)
    )
    product = (r["norm22"] * inp_dims / strides).prod()
    out["neyshabur_fro"] = (
        2 ** (L - 1) * classes * r["data_norm"] / np.sqrt(2 * n) * product / np.sqrt(n)
    )
    out["golowich_fro"] = (
        classes
        * r["data_norm"]
        / np.sqrt(n)
        * product
        * (1 + np.sqrt(2 * np.log(2) * L))
        / np.sqrt(n)
    )
    log10 = np.log10(2 ** (L + 0.5) * classes * r["data_norm"] / np.sqrt(n))
    log10 += np.log10(inp_dims**2 / strides * np.sqrt(in_channels) * r["norm22"]).sum()
    prods = np.cumprod(inp_dims * np.sqrt(in_channels))
    log10 += np.log10((r["dist22"] / r["norm22"] / prods).sum()) - np.log10(np.sqrt(n))
    out["gouk_fro"] = 10**log10
    return out


@pytest.fixture(scope="module")
def quantities():
    keras.utils.set_random_seed(7)
    model = small_network()
    x, y = data(model)
    return bounds.measure_quantities(model, x, y), model, x, y


@pytest.fixture(scope="module")
def reference(quantities):
    _, model, x, y = quantities
    return {**reference_record(model, x, y), "b_l": patch_norms(model, x)}


def test_the_reference_names_give_the_measured_record(quantities, reference):
    q = quantities[0]
    plugged = bounds.Quantities.from_reference(**reference)
    for field in dataclasses.fields(bounds.Quantities):
        if field.name == "train_margins":
            continue
        assert getattr(plugged, field.name) == pytest.approx(getattr(q, field.name), rel=1e-5), (
            field.name
        )


@pytest.mark.parametrize("margin", np.geomspace(1e-3, 100, 11))
def test_every_bound_against_the_reference_code(reference, margin):
    plugged = bounds.Quantities.from_reference(**reference)
    ours, expected = bounds.all_bounds(plugged, margin), reference_bounds(reference, margin)
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
    at_init = bounds.Quantities(
        **{
            **q.__dict__,
            "dist21": (0.0,) * 3,
            "filter_dist21": (0.0,) * 3,
            "dist_fro": (0.0,) * 3,
            "dist_1inf": (0.0,) * 3,
        }
    )
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


def test_certified_accuracy_and_its_guarantee():
    from keras_capacity import measurement

    shares = measurement.certified_accuracy(
        [-1.0, 0.5, 2.0, 4.0], lipschitz=2.0, radii=(0.0, 0.5, 1.0, 2.0)
    )
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


def test_test_error_bound_against_a_direct_computation(quantities, reference):
    """The margin bound, minimized over the grid with the union-bound
    correction, computed here from the reference's complexity bounds."""
    q = quantities[0]
    margins = np.asarray(q.train_margins)
    delta, grid = 0.05, bounds.MARGIN_GRID
    confidence = 3 * np.sqrt(np.log(2 * len(grid) / delta) / (2 * q.n))
    curves = {name: [] for name in bounds.BOUNDS}
    for gamma in grid:
        ramp = np.mean([1.0 if m <= 0 else (1 - m / gamma if m < gamma else 0.0) for m in margins])
        with np.errstate(all="ignore"):
            values = reference_bounds(reference, gamma)
        for name, value in values.items():
            # layer-peeling bounds are on the outputs: times 2/gamma for the ramp class
            complexity = value * 2 / gamma if name in bounds.MARGIN_FREE else value
            curves[name].append(ramp + 2 * complexity + confidence)
    found = bounds.error_bounds(q)
    for name, values in curves.items():
        best = int(np.nanargmin(values))
        # The measured patch norms are float32 sums, the reference's a
        # float64 loop: about 1e-7 apart.
        assert found[name].value == pytest.approx(values[best], rel=1e-6), name
        assert found[name].margin == grid[best], name
        assert found[name].vacuous == (values[best] >= 1)
    assert found["ours_norms"].confidence == pytest.approx(confidence)
    # The parts add up, and a bound of 1 or more says nothing.
    for bound in found.values():
        assert bound.value == pytest.approx(
            bound.ramp_loss + 2 * bound.complexity + bound.confidence
        )


def test_ramp_loss_is_piecewise():
    assert bounds.ramp_loss([-1.0, 0.0, 0.5, 1.0, 3.0], 1.0) == pytest.approx((1 + 1 + 0.5) / 5)


def test_quantities_are_checked_when_made(quantities):
    q = quantities[0]
    fields = {f.name: getattr(q, f.name) for f in dataclasses.fields(q)}
    bad = [
        (dict(dist21=(1.0, 2.0)), r"Quantities.dist21 has 2 values; Quantities.lipschitz has 3"),
        (dict(n=0), "Quantities.n must be a positive integer"),
        (dict(params=(10, 0, 3)), r"Quantities.params\[1\] must be a positive integer"),
        (dict(lipschitz=(1.0, math.inf, 1.0)), r"Quantities.lipschitz\[1\] must be finite and > 0"),
        (dict(margin=math.nan), "Quantities.margin must be finite"),
        (dict(num_classes=1), "Quantities.num_classes must be >= 2"),
        (dict(norm_fro=(1.0, -1.0, 2.0)), r"Quantities.norm_fro\[1\] must be finite and >= 0"),
        (dict(lipschitz=None), "Quantities.lipschitz is required"),
        (dict(train_margins=(1.0, 2.0)), "Quantities.train_margins must hold n=40"),
    ]
    for changes, message in bad:
        with pytest.raises(ValueError, match=message):
            bounds.Quantities(**{**fields, **changes})
    with pytest.raises(ValueError, match="unknown name 'lipschitzz'"):
        bounds.Quantities.from_reference(**{**fields, "lipschitzz": 1})


def test_a_bound_without_its_inputs_names_them(quantities):
    q = quantities[0]
    core = {
        name: getattr(q, name)
        for name in (
            "n",
            "num_classes",
            "data_norm",
            "margin",
            "lipschitz",
            "dist21",
            "params",
            "input_sizes",
            "kernel_sizes",
            "strides",
            "in_channels",
        )
    }
    minimal = bounds.Quantities(**core)
    assert bounds.ours_norms(minimal, 1.0) == bounds.ours_norms(q, 1.0)
    with pytest.raises(
        ValueError,
        match="'ledent_main' needs Quantities.filter_dist21, "
        "Quantities.dist_fro, Quantities.patch_norms",
    ):
        bounds.ledent_main(minimal, 1.0)
    with pytest.raises(ValueError, match="needs Quantities.train_margins"):
        bounds.error_bound(minimal, "ours_norms")
