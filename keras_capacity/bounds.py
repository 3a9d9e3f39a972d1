"""Rademacher-complexity bounds of the paper's Table 1, and the bound on the
test error they give (SPEC §6).

Three parts, kept apart so that quantities measured elsewhere (by the
PyTorch reference, say) can be plugged in and the bounds compared:

* `Quantities`, a validated record of what the bounds are made of
  (`Quantities.from_reference` takes the reference's names), and
  `measure_quantities`, which measures it for a bound Keras model and
  its training data (streamed, float64);
* the twelve complexity bounds ``R(gamma)`` on the empirical Rademacher
  complexity, pure functions of a `Quantities` and the margin
  ``gamma``: `BOUNDS` maps their names to them, `all_bounds`
  evaluates them, `bounds_over_margins` over a range of ``gamma``;
* `error_bound` / `error_bounds`: for each of them, the
  margin bound on the test error at its best margin, which is what a user
  reads first (see `error_bound` for the formula and its source).

The formulas are those of the reference implementation's *code* (Graf et
al., ``bounds/rademacher_bounds.py``), which this module re-derives rather
than copies; where the reference's documentation differs from its code, the
code is followed (e.g. ``ours_params``). Where the reference has defects
this module differs, on purpose:

* a non-positive margin gives a ``RuntimeWarning`` and ``inf`` for the
  margin-based bounds, not NaN or a negative bound;
* nothing is mutated: the reference's Ledent bound overwrites the last
  layer's Lipschitz constant, which changes every bound computed after it;
  here every bound reads the same frozen record, in any order;
* patch norms for Ledent's bounds come from one convolution with a ones
  kernel per layer over the patches the layer really sees (with its
  padding and stride), not a Python loop over truncated positions.

Layers are the model's kernels in forward order, the classifier last; a
Dense layer counts as a 1x1 convolution on a 1x1 input.
"""

import dataclasses
import math
import warnings

import keras
import numpy as np
import scipy.special

# Per-layer fields: (name, the smallest value allowed, needed by every bound).
_LAYER_FIELDS = (
    ("lipschitz", "positive", True),
    ("dist21", "nonnegative", False),
    ("params", "count", True),
    ("input_sizes", "count", True),
    ("kernel_sizes", "count", True),
    ("strides", "count", True),
    ("in_channels", "count", True),
    ("filter_dist21", "nonnegative", False),
    ("norm_fro", "nonnegative", False),
    ("dist_fro", "nonnegative", False),
    ("norm_1inf", "nonnegative", False),
    ("dist_1inf", "nonnegative", False),
    ("filter_norm_max", "nonnegative", False),
    ("patch_norms", "nonnegative", False),
)
# Network fields that only some bounds need.
_OPTIONAL_NETWORK_FIELDS = ("data_max_abs", "data_max_coordinate_norm")


@dataclasses.dataclass(frozen=True)
class Quantities:
    """What the bounds are made of, per network and per layer (float64).

    Network: ``n`` training examples, ``num_classes`` ``kappa``; of the
    training inputs ``X`` (as the model sees them): ``data_norm``
    ``||X||_F``, ``data_max_abs`` ``max |X_ij|``, ``data_max_coordinate_norm``
    (the largest l2 norm of one input coordinate over the examples);
    ``margin`` ``gamma``, the smallest training margin
    ``v_y - max_{i != y} v_i``; ``train_margins``, every training margin
    (for the bound on the test error).

    Per layer ``i`` (tuples, forward order): ``lipschitz`` ``s_i``;
    ``dist21`` ``||K_i - K_i^0||_{2,1}`` (l2 over input channels, summed over
    output channels and kernel positions: the constrained distance);
    ``filter_dist21`` (l2 over each output filter, summed); ``norm_fro``,
    ``dist_fro``; ``norm_1inf``, ``dist_1inf`` (the largest l1 norm of one
    output filter); ``params`` ``W_i``; ``input_sizes`` ``d_i`` (input width);
    ``kernel_sizes`` ``k_i``; ``strides``; ``in_channels``;
    ``filter_norm_max`` (the largest Frobenius norm of one output filter);
    ``patch_norms`` (the largest l2 norm of an input patch the layer sees).

    Every bound needs ``n``, ``num_classes``, ``data_norm``, ``margin`` and
    the per-layer ``lipschitz``, ``params``, ``input_sizes``,
    ``kernel_sizes``, ``strides``, ``in_channels``; the other fields may be
    ``None`` (the distances, say, of a model whose initial weights are
    unknown), and a bound that needs one raises `NotApplicable`. The record is checked when
    made: per-layer tuples of one length, counts that are positive integers,
    finite values where they must be; a ``ValueError`` names the field.
    """

    n: int
    num_classes: int
    data_norm: float
    margin: float
    lipschitz: tuple
    dist21: tuple
    params: tuple
    input_sizes: tuple
    kernel_sizes: tuple
    strides: tuple
    in_channels: tuple
    data_max_abs: float = None
    data_max_coordinate_norm: float = None
    filter_dist21: tuple = None
    norm_fro: tuple = None
    dist_fro: tuple = None
    norm_1inf: tuple = None
    dist_1inf: tuple = None
    filter_norm_max: tuple = None
    patch_norms: tuple = None
    train_margins: tuple = None

    def __post_init__(self):
        for name, value in _checked_fields(self).items():
            object.__setattr__(self, name, value)

    @property
    def depth(self):
        return len(self.lipschitz)

    def array(self, name):
        """A per-layer field as a float64 array."""
        return np.asarray(getattr(self, name), np.float64)

    @classmethod
    def from_reference(cls, **values):
        """A record from the PyTorch reference's names (its ``Bounds``
        attributes), so that its numbers can be plugged in and compared:

        ============================  ============================
        reference (``Bounds``)        `Quantities`
        ============================  ============================
        ``n``                         ``n``
        ``classes``                   ``num_classes``
        ``margin``                    ``margin``
        ``lip``                       ``lipschitz``
        ``dist21``                    ``dist21``
        ``matrix_dist21``             ``filter_dist21``
        ``norm22``                    ``norm_fro``
        ``dist22``                    ``dist_fro``
        ``norm1inf``                  ``norm_1inf``
        ``dist1inf``                  ``dist_1inf``
        ``params``                    ``params``
        ``inp_dims``                  ``input_sizes``
        ``kernel_sizes``              ``kernel_sizes``
        ``strides``                   ``strides``
        ``in_channels``               ``in_channels``
        ``b_l`` (``ledent_main``)     ``patch_norms``
        ============================  ============================

        What the reference computes inline goes by this record's own names:
        ``data_norm`` (``data.norm()``), ``data_max_abs``
        (``data.abs().max()``), ``data_max_coordinate_norm``
        (``data.norm(dim=0).max()``), ``filter_norm_max``
        (``weight.norm(dim=[1, 2, 3]).max()`` per layer). Tensors and arrays
        are accepted; an unknown name is a ``ValueError``.
        """
        fields = {field.name for field in dataclasses.fields(cls)}
        converted = {}
        for name, value in values.items():
            ours = REFERENCE_NAMES.get(name, name)
            if ours not in fields:
                raise ValueError(
                    f"Quantities.from_reference: unknown name {name!r}; known: "
                    f"{sorted(set(REFERENCE_NAMES) | fields)}."
                )
            converted[ours] = _plain(value)
        return cls(**converted)


# The reference's names of the fields that it keeps as attributes.
REFERENCE_NAMES = {
    "classes": "num_classes",
    "lip": "lipschitz",
    "matrix_dist21": "filter_dist21",
    "norm22": "norm_fro",
    "dist22": "dist_fro",
    "norm1inf": "norm_1inf",
    "dist1inf": "dist_1inf",
    "inp_dims": "input_sizes",
    "b_l": "patch_norms",
}


def _plain(value):
    """A tensor, array or number as plain Python floats (a tuple for arrays)."""
    array = (
        np.asarray(getattr(value, "numpy", lambda: value)(), np.float64)
        if not isinstance(value, (list, tuple))
        else np.asarray(value, np.float64)
    )
    return float(array) if array.ndim == 0 else tuple(float(v) for v in array.ravel())


def _number(name, value, kind):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Quantities.{name} must be a number, got {value!r}.") from None
    if kind == "count":
        if not (math.isfinite(number) and number >= 1 and number == int(number)):
            raise ValueError(f"Quantities.{name} must be a positive integer, got {value!r}.")
        return int(number)
    if (
        not math.isfinite(number)
        or (kind == "positive" and number <= 0)
        or (kind == "nonnegative" and number < 0)
    ):
        wanted = {
            "positive": "finite and > 0",
            "nonnegative": "finite and >= 0",
            "finite": "finite",
        }[kind]
        raise ValueError(f"Quantities.{name} must be {wanted}, got {value!r}.")
    return number


def _checked_fields(q):
    """Every field converted and checked, or a ValueError naming it."""
    checked = {
        "n": _number("n", q.n, "count"),
        "num_classes": _number("num_classes", q.num_classes, "count"),
        "data_norm": _number("data_norm", q.data_norm, "positive"),
        "margin": _number("margin", q.margin, "finite"),
    }
    if checked["num_classes"] < 2:
        raise ValueError(f"Quantities.num_classes must be >= 2, got {q.num_classes!r}.")
    for name in _OPTIONAL_NETWORK_FIELDS:
        value = getattr(q, name)
        checked[name] = None if value is None else _number(name, value, "nonnegative")
    depth = None
    for name, kind, required in _LAYER_FIELDS:
        value = getattr(q, name)
        if value is None:
            if required:
                raise ValueError(f"Quantities.{name} is required (one value per layer).")
            checked[name] = None
            continue
        try:
            values = tuple(value)
        except TypeError:
            raise ValueError(
                f"Quantities.{name} must hold one value per layer, got {value!r}."
            ) from None
        depth = len(values) if depth is None else depth
        if len(values) != depth or not values:
            raise ValueError(
                f"Quantities.{name} has {len(values)} values; "
                f"Quantities.lipschitz has {len(q.lipschitz)} layers."
            )
        checked[name] = tuple(_number(f"{name}[{i}]", v, kind) for i, v in enumerate(values))
    if q.train_margins is not None:
        margins = np.asarray(q.train_margins, np.float64).ravel()
        if len(margins) != checked["n"] or not np.all(np.isfinite(margins)):
            raise ValueError(
                f"Quantities.train_margins must hold n={checked['n']} finite "
                f"margins, got {len(margins)}."
            )
        checked["train_margins"] = tuple(float(m) for m in margins)
    return checked


class NotApplicable(ValueError):
    """A bound that cannot be evaluated on this record: a quantity it is
    made of is unknown (``None``). The message names it."""


_DISTANCES = ("dist21", "filter_dist21", "dist_fro", "dist_1inf")


def _needs(q, bound, *names):
    missing = [name for name in names if getattr(q, name) is None]
    if missing:
        why = (
            " (the distances to initialization are unknown: no initial weights)"
            if set(missing) & set(_DISTANCES)
            else ""
        )
        raise NotApplicable(
            f"The bound {bound!r} needs Quantities.{', Quantities.'.join(missing)}, which is "
            f"None{why}."
        )


# ----------------------------------------------------------------- bounds


def _checked_margin(gamma):
    if not gamma > 0:
        warnings.warn(
            f"The margin gamma={gamma} is not positive: margin-based bounds are inf "
            "(the network misclassifies a training example).",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return float(gamma)


def _c_tilde(q, gamma):
    """``C_i = 4/gamma ||X||/sqrt(n) prod(s) b_i / s_i`` (Theorem 3.5)."""
    s = q.array("lipschitz")
    return 4 / gamma * q.data_norm / math.sqrt(q.n) * np.prod(s) * q.array("dist21") / s


def ours_norms(q, gamma):
    """Graf et al. 2022, Theorem 3.5, first bound:
    ``4/n + 12 log(n)/sqrt(n) sqrt(log(2W)) (sum_i C_i^(2/3))^(3/2)``,
    ``W = max_i W_i``. As the reference's code: ``log(n)`` for the harmonic
    number ``H_{n-1}`` and no ceiling on ``C_i^(2/3)`` (its documentation
    writes both)."""
    _needs(q, "ours_norms", "dist21")
    if _checked_margin(gamma) is None:
        return math.inf
    c = _c_tilde(q, gamma)
    norms = np.sum(c ** (2 / 3)) ** 1.5
    params = math.sqrt(math.log(2 * max(q.params)))
    return 4 / q.n + 12 * math.log(q.n) / math.sqrt(q.n) * params * norms


def ours_params(q, gamma):
    """Graf et al. 2022, Theorem 3.5, second bound:
    ``12/sqrt(n) sqrt(sum_i 2 W_i (log(1 + x_i) + psi(x_i)))`` at
    ``x_i = (L C_i)^2``, with ``psi(x) = zeta(3/2)^(1/3) zeta(3/2, 1 + 1/x^2)``
    (Hurwitz zeta).

    This is the reference's *code*: its documentation writes
    ``psi(ceil(L^2 C_i^2))`` and ``log(1 + ceil(L^2 C_i^2))``, a ceiling its
    code does not apply, and our earlier ``1 + 1/x`` inside ``psi`` differed
    from both (SPEC §6 says to follow the code where the two differ)."""
    _needs(q, "ours_params", "dist21")
    if _checked_margin(gamma) is None:
        return math.inf
    x = (q.depth * _c_tilde(q, gamma)) ** 2
    with np.errstate(divide="ignore", over="ignore"):
        psi = scipy.special.zeta(1.5, 1) ** (1 / 3) * scipy.special.zeta(1.5, 1 + 1 / x**2)
    terms = 2 * q.array("params") * (np.log1p(x) + np.nan_to_num(psi))
    return 12 / math.sqrt(q.n) * math.sqrt(np.sum(terms))


def _output_sizes(q):
    """``d_{i+1}``: the next layer's input width, 1 after the last."""
    return np.append(q.array("input_sizes")[1:], 1.0)


def bartlett(q, gamma):
    """Bartlett, Foster & Telgarsky 2017, Lemma A.8, on the convolutions'
    matrices: ``C_i`` times ``d_{i+1}^2 / k_i``, and
    ``W = max_i W_i (d_i d_{i+1} / k_i)^2``."""
    _needs(q, "bartlett", "dist21")
    if _checked_margin(gamma) is None:
        return math.inf
    d_out, k = _output_sizes(q), q.array("kernel_sizes")
    c = _c_tilde(q, gamma) * d_out**2 / k
    width = np.max(q.array("params") * (q.array("input_sizes") * d_out / k) ** 2)
    norms = np.sum(c ** (2 / 3)) ** 1.5
    return 4 / q.n + 12 * math.log(q.n) / math.sqrt(q.n) * math.sqrt(math.log(2 * width)) * norms


def _ledent_bound(q, r, log_factor):
    d_out = _output_sizes(q)
    channels_out = np.append(q.array("in_channels")[1:], q.num_classes)
    big_r = np.sum(r ** (2 / 3)) ** 1.5
    big_gamma = np.max(r * d_out**2 * channels_out)
    width = np.max(d_out**2 * channels_out)
    root = math.sqrt(math.log2(32 * big_gamma * q.n**2 + 7 * width * q.n))
    return 4 / q.n + 768 * big_r * root * log_factor


def ledent_main(q, gamma):
    """Ledent, Mustafa, Lei & Kloft 2021, Theorem 11: ``r_i = b_i rho_i a_i``
    with ``b_i`` the largest input-patch norm of layer ``i``, ``a_i`` its
    per-filter distance (the classifier's Frobenius distance to its
    initialization, as the reference's code and documentation) and
    ``rho_i = max_{j > i} d_{i+1} prod_{i<l<=j} s_l / b_{j+1}``
    (``b_{L+1} = gamma``); bound
    ``4/n + 768 R sqrt(log2(32 Gamma n^2 + 7 W n)) log(n)/sqrt(n)``."""
    _needs(q, "ledent_main", "filter_dist21", "dist_fro", "patch_norms")
    if _checked_margin(gamma) is None:
        return math.inf
    dists = q.array("filter_dist21").copy()
    dists[-1] = q.dist_fro[-1]
    lips = q.array("lipschitz")
    b = np.append(q.array("patch_norms"), gamma)
    d = q.array("input_sizes")
    depth = q.depth
    rho = [
        max(np.prod(lips[i + 1 : j + 1]) / b[j + 1] * d[i + 1] for j in range(i + 1, depth))
        for i in range(depth - 1)
    ]
    rho.append(b[-2] / b[-1])
    r = b[:-1] * np.asarray(rho) * dists
    return _ledent_bound(q, r, math.log(q.n) / math.sqrt(q.n))


def ledent_fixed_constraints(q, gamma):
    """Ledent et al. 2021, Section E (Lipschitz constraints on every layer):
    ``r_i = X_0/gamma prod(s) a_i / s_i d_{i+1}``, ``X_0`` the largest input
    patch norm; the classifier enters with its Frobenius norm and its
    largest filter norm (as the reference); bound
    ``4/n + 768 R sqrt(log2(32 Gamma n^2 + 7 W n))`` (as the reference,
    without the ``log(n)/sqrt(n)`` factor)."""
    _needs(
        q, "ledent_fixed_constraints", "filter_dist21", "norm_fro", "filter_norm_max", "patch_norms"
    )
    if _checked_margin(gamma) is None:
        return math.inf
    dists, lips = q.array("filter_dist21").copy(), q.array("lipschitz").copy()
    dists[-1], lips[-1] = q.norm_fro[-1], q.filter_norm_max[-1]
    r = q.patch_norms[0] / gamma * np.prod(lips) * dists / lips * _output_sizes(q)
    return _ledent_bound(q, r, 1.0)


def lin(q, gamma):
    """Lin & Zhang 2019, Lemma 18:
    ``16/sqrt(n) (2/gamma ||X||/sqrt(n) prod(s) L^2 sum_i W_i^2 d_i/t_i ||K_i||_F / s_i)^(1/4)``."""
    _needs(q, "lin", "norm_fro")
    if _checked_margin(gamma) is None:
        return math.inf
    s = q.array("lipschitz")
    summands = (
        q.array("params") ** 2
        * q.array("input_sizes")
        / q.array("strides")
        * q.array("norm_fro")
        / s
    )
    root = 2 / gamma * q.data_norm / math.sqrt(q.n) * np.prod(s) * q.depth**2 * np.sum(summands)
    return 16 * root**0.25 / math.sqrt(q.n)


def _input_dimension(q):
    return q.in_channels[0] * q.input_sizes[0] ** 2


def neyshabur_1inf(q, gamma=None):
    """Neyshabur, Tomioka & Srebro 2015, Corollary 2, (1,inf) norms:
    ``2^L K prod ||K_i||_{1,inf} sqrt(log(2 D)) max|X| / sqrt(n)``."""
    _needs(q, "neyshabur_1inf", "norm_1inf", "data_max_abs")
    return (
        2**q.depth
        * q.num_classes
        * np.prod(q.array("norm_1inf"))
        * math.sqrt(math.log(2 * _input_dimension(q)))
        * q.data_max_abs
        / math.sqrt(q.n)
    )


def golowich_1inf(q, gamma=None):
    """Golowich, Rakhlin & Shamir 2018, Theorem 2:
    ``2 K prod ||K_i||_{1,inf} sqrt(L + 1 + log D) sqrt(max_j ||X_j|| / n) / sqrt(n)``."""
    _needs(q, "golowich_1inf", "norm_1inf", "data_max_coordinate_norm")
    return (
        2
        * q.num_classes
        * np.prod(q.array("norm_1inf"))
        * math.sqrt(q.depth + 1 + math.log(_input_dimension(q)))
        * math.sqrt(q.data_max_coordinate_norm / q.n)
        / math.sqrt(q.n)
    )


def gouk_1inf(q, gamma=None):
    """Gouk, Hospedales & Pontil 2021, Theorem 1:
    ``2^(L+1) K prod ||K_i||_{1,inf} log(D) sum_i dist_i/norm_i max|X| / sqrt(n)``."""
    _needs(q, "gouk_1inf", "norm_1inf", "dist_1inf", "data_max_abs")
    ratio = np.sum(q.array("dist_1inf") / q.array("norm_1inf"))
    return (
        2 ** (q.depth + 1)
        * q.num_classes
        * np.prod(q.array("norm_1inf"))
        * math.log(_input_dimension(q))
        * ratio
        * q.data_max_abs
        / math.sqrt(q.n)
    )


def _frobenius_product(q):
    return np.prod(q.array("norm_fro") * q.array("input_sizes") / q.array("strides"))


def neyshabur_fro(q, gamma=None):
    """Neyshabur et al. 2015, Corollary 2, Frobenius norms of the matrices:
    ``2^(L-1) K ||X||/sqrt(2n) prod ||K_i||_F d_i/t_i / sqrt(n)``."""
    _needs(q, "neyshabur_fro", "norm_fro")
    return (
        2 ** (q.depth - 1)
        * q.num_classes
        * q.data_norm
        / math.sqrt(2 * q.n)
        * _frobenius_product(q)
        / math.sqrt(q.n)
    )


def golowich_fro(q, gamma=None):
    """Golowich et al. 2018, Theorem 1:
    ``K ||X||/sqrt(n) prod ||K_i||_F d_i/t_i (1 + sqrt(2 log(2) L)) / sqrt(n)``."""
    _needs(q, "golowich_fro", "norm_fro")
    return (
        q.num_classes
        * q.data_norm
        / math.sqrt(q.n)
        * _frobenius_product(q)
        * (1 + math.sqrt(2 * math.log(2) * q.depth))
        / math.sqrt(q.n)
    )


def gouk_fro(q, gamma=None):
    """Gouk et al. 2021, Theorem 2, in logarithms for range:
    ``2^(L+1/2) K ||X||/sqrt(n) prod_i (d_i^2/t_i sqrt(c_i) ||K_i||_F)
    sum_i dist_i / (||K_i||_F prod_{j<=i} d_j sqrt(c_j)) / sqrt(n)``."""
    _needs(q, "gouk_fro", "norm_fro", "dist_fro")
    d, c = q.array("input_sizes"), q.array("in_channels")
    log_bound = math.log(2 ** (q.depth + 0.5) * q.num_classes * q.data_norm / math.sqrt(q.n))
    log_bound += np.sum(np.log(d**2 / q.array("strides") * np.sqrt(c) * q.array("norm_fro")))
    prefix = np.cumprod(d * np.sqrt(c))
    distances = np.sum(q.array("dist_fro") / q.array("norm_fro") / prefix)
    if distances == 0:  # every kernel at K0
        return 0.0
    log_bound += math.log(distances)
    return math.exp(log_bound - 0.5 * math.log(q.n))


# Ours first, then the others in the order of the paper's Table 1.
BOUNDS = {
    "ours_norms": ours_norms,
    "ours_params": ours_params,
    "bartlett": bartlett,
    "ledent_main": ledent_main,
    "ledent_fixed_constraints": ledent_fixed_constraints,
    "lin": lin,
    "neyshabur_1inf": neyshabur_1inf,
    "golowich_1inf": golowich_1inf,
    "gouk_1inf": gouk_1inf,
    "neyshabur_fro": neyshabur_fro,
    "golowich_fro": golowich_fro,
    "gouk_fro": gouk_fro,
}
# The layer-peeling bounds: on the complexity of the network's outputs (times
# kappa, as the reference), not of the ramp-loss class; they do not depend
# on the margin.
MARGIN_FREE = (
    "neyshabur_1inf",
    "golowich_1inf",
    "gouk_1inf",
    "neyshabur_fro",
    "golowich_fro",
    "gouk_fro",
)


def all_bounds(q: Quantities, gamma: float | None = None) -> dict[str, float]:
    """``{name: bound}`` for every bound, at ``gamma`` (default: ``q.margin``)."""
    gamma = q.margin if gamma is None else gamma
    return {name: float(bound(q, gamma)) for name, bound in BOUNDS.items()}


def bounds_over_margins(q: Quantities, gammas) -> dict[str, list[float]]:
    """``{name: [bound at each gamma]}``; margin-free bounds are constant."""
    gammas = [float(g) for g in gammas]
    return {name: [float(bound(q, g)) for g in gammas] for name, bound in BOUNDS.items()}


# ----------------------------------------------------- the test error

# The margins the test-error bound is minimized over: fixed before any data
# is seen (as the union bound needs), 2^-20 ... 2^20 in steps of sqrt(2).
MARGIN_GRID = tuple(2.0 ** (j / 2) for j in range(-40, 41))
DELTA = 0.05


def ramp_loss(margins, gamma: float) -> float:
    """The mean ramp loss at margin ``gamma``: 1 for a margin ``m <= 0``,
    ``1 - m/gamma`` for ``0 < m < gamma``, 0 for ``m >= gamma``."""
    return float(np.mean(np.clip(1.0 - np.asarray(margins, np.float64) / gamma, 0.0, 1.0)))


def ramp_class_complexity(q, name, gamma):
    """``R_S(F_gamma)``, the empirical Rademacher complexity of the ramp
    loss composed with the network, by bound ``name``.

    The covering-number bounds (ours, Bartlett, Ledent, Lin) bound it
    directly. The six layer-peeling bounds (`MARGIN_FREE`) bound the
    complexity of the network's outputs, times ``kappa`` (the reference's
    vector contraction over the classes); the ramp loss of the margin is
    ``sqrt(2)/gamma``-Lipschitz in the l2 norm of the outputs, so by
    Maurer's vector contraction (2016) theirs is multiplied by ``2/gamma``.
    """
    value = BOUNDS[name](q, gamma)
    return value * 2 / gamma if name in MARGIN_FREE else value


@dataclasses.dataclass(frozen=True)
class ErrorBound:
    """A bound on the test error at its best margin, with its parts:
    ``value = ramp_loss + 2 complexity + confidence``."""

    name: str
    value: float
    margin: float
    ramp_loss: float
    complexity: float
    confidence: float
    delta: float

    @property
    def vacuous(self):
        """Whether it says nothing: a probability bound of 1 or more."""
        return not self.value < 1

    def as_dict(self):
        values = dataclasses.asdict(self)
        values["vacuous"] = self.vacuous
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in values.items()
        }


def error_bound(q: Quantities, name: str, delta: float = DELTA, grid=MARGIN_GRID) -> ErrorBound:
    """The margin bound on the test error by complexity bound ``name``.

    With probability at least ``1 - delta`` over the ``n`` training
    examples, for every margin ``gamma_k`` of the fixed ``grid`` (``K``
    values) at once,

        P(error) <= ramp_gamma_k(train) + 2 R_S(F_gamma_k) + 3 sqrt(log(2K/delta) / (2n)),

    the standard margin bound (Bartlett, Foster & Telgarsky 2017, Lemma A.4;
    Mohri, Rostamizadeh & Talwalkar, *Foundations of Machine Learning*,
    Theorem 3.3 with the ramp loss) applied at each ``gamma_k`` with
    confidence ``delta/K`` (the union bound over the grid), where
    ``ramp_gamma`` is the mean ramp loss of the training margins
    (`ramp_loss`) and ``R_S(F_gamma)`` is `ramp_class_complexity`.
    Returns the smallest over the grid as an `ErrorBound`; a value of
    1 or more is *vacuous*. Needs ``q.train_margins``.
    """
    _needs(q, name, "train_margins")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}.")
    confidence = 3 * math.sqrt(math.log(2 * len(grid) / delta) / (2 * q.n))
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflowing products are inf bounds
        for gamma in grid:
            ramp = ramp_loss(q.train_margins, gamma)
            complexity = ramp_class_complexity(q, name, gamma)
            value = ramp + 2 * complexity + confidence
            if best is None or value < best.value:
                best = ErrorBound(
                    name,
                    float(value),
                    float(gamma),
                    ramp,
                    float(complexity),
                    confidence,
                    float(delta),
                )
    return best


def error_bounds(q: Quantities, delta: float = DELTA, grid=MARGIN_GRID) -> dict[str, ErrorBound]:
    """``{name: ErrorBound}`` for every bound of `BOUNDS`."""
    return {name: error_bound(q, name, delta, grid) for name in BOUNDS}


# -------------------------------------------------------------- measuring


def measure_quantities(
    model: keras.Model, data, labels=None, num_classes: int | None = None, batch_size: int = 256
) -> Quantities:
    """The `Quantities` of a model and its training data: the
    ``quantities`` of `keras_capacity.measure` (see there).

    ``data`` is an array of inputs with ``labels``, or a ``tf.data.Dataset``
    of ``(inputs, labels)`` batches. A model the bounds do not apply to (not
    a chain of convolutions) is a `NotApplicable` that says why.
    """
    from keras_capacity import measurement

    train = data if labels is None else (np.asarray(data), np.asarray(labels))
    record = measurement.measure(model, train, num_classes=num_classes, batch_size=batch_size)
    if record.quantities is None:
        raise NotApplicable(f"the bounds do not apply to {model.name!r}: {record.bounds_reason}.")
    return record.quantities
