"""The grid of a sweep: what ``--grid`` means, and the trials it makes.

An axis is ``NAME:V1,V2,...``. ``NAME`` is one of the eight constraint
entries (``lip.first``, ``lip.inner``, ``lip.shortcut``, ``lip.classifier``,
``dist.first``, ...), whose values replace that entry of the base flags
(``inf`` or ``-1``: no constraint), or ``lip`` / ``dist``, whose values are
factors that scale all four entries of that kind (entries without a
constraint stay without; a factor ``inf`` removes them). Several axes form
their product. Every point is trained with ``seeds`` seeds (the base
``--seed`` and the next ones), and the unconstrained baseline (the base
flags with no constraint at all) always belongs to the sweep.

A search (``--search=bisect`` or ``frontier``) gives its searched axis as a
bracket, ``NAME:LOOSE,TIGHT``, instead: its candidates are the values of
`log_grid`, log-evenly spaced between the two ends, each less than a
factor ``--resolution`` from the next (the dense grid a search replaces).
"""

import dataclasses
import itertools
import math

from keras_capacity import constraint_values
from keras_capacity.training.config import RunConfig

KINDS = (constraint_values.LIPSCHITZ, constraint_values.DISTANCE)
ENTRY_NAMES = tuple(f"{kind}.{entry}" for kind in KINDS for entry in constraint_values.ENTRIES)
SCALE_NAMES = KINDS
BASELINE = "baseline"
# The most values a bracket may hold at its resolution (a finer one is a
# mistake: the trial names and KerasTuner's search space hold them all).
MOST_BRACKET_VALUES = 1000


class GridError(ValueError):
    """A ``--grid`` (or the sweep around it) is not valid; the message names it."""


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept setting: a constraint entry or a scale factor, and its values."""

    name: str
    values: tuple

    @property
    def is_scale(self):
        return self.name in SCALE_NAMES

    def label(self, value):
        """How a value of this axis reads in names and figures."""
        text = constraint_values.format_bound(value)
        text = "inf" if text == "-1" else text
        return f"x{text}" if self.is_scale else text


def parse_axis(spec):
    """An `Axis` from ``NAME:V1,V2,...``; a `GridError` that
    says what is wrong otherwise."""
    name, colon, values = str(spec).partition(":")
    name = name.strip()
    if not colon:
        raise GridError(f"--grid={spec!r}: expected NAME:V1,V2,... (e.g. dist.inner:1,4,16).")
    if name not in ENTRY_NAMES + SCALE_NAMES:
        raise GridError(
            f"--grid={spec!r}: unknown name {name!r}; expected one of "
            f"{', '.join(ENTRY_NAMES + SCALE_NAMES)}."
        )
    texts = [v.strip() for v in values.split(",")]
    if not values.strip() or not all(texts):
        raise GridError(f"--grid={spec!r}: give at least one value, separated by commas.")
    parsed = []
    for text in texts:
        try:
            number = float(text)
        except ValueError:
            raise GridError(f"--grid={spec!r}: {text!r} is not a number.") from None
        if name in SCALE_NAMES:
            if math.isnan(number) or number <= 0:
                raise GridError(
                    f"--grid={spec!r}: a scale factor must be > 0 or inf, got {text!r}."
                )
        else:
            kind = name.split(".")[0]
            number = math.inf if number == -1 else number
            try:
                number = constraint_values.check_bound(number, kind, f"--grid={spec!r}: {text!r}")
            except ValueError as error:
                raise GridError(str(error)) from None
        parsed.append(number)
    if len(set(parsed)) < len(parsed):
        raise GridError(f"--grid={spec!r}: values repeat.")
    return Axis(name, tuple(parsed))


def parse_grid(specs):
    """The axes of ``--grid`` flags (at least one, names not repeated)."""
    if not specs:
        raise GridError("give at least one --grid=NAME:V1,V2,... to sweep.")
    axes = [parse_axis(spec) for spec in specs]
    names = [axis.name for axis in axes]
    if len(set(names)) < len(names):
        raise GridError(f"--grid names repeat: {names}.")
    kinds = {name.split(".")[0] for name in names if name in SCALE_NAMES}
    clash = [name for name in names if name not in SCALE_NAMES and name.split(".")[0] in kinds]
    if clash:
        raise GridError(f"--grid: {clash} and a scale of all {sorted(kinds)} entries overlap.")
    return tuple(axes)


def parse_bracket(spec, search):
    """The ``(tight, loose)`` ends of a searched axis ``NAME:LOOSE,TIGHT``
    (either order) as an `Axis`; a `GridError` when it has
    another number of values or an end a log scale cannot hold."""
    axis = parse_axis(spec)
    if len(axis.values) != 2:
        raise GridError(
            f"--grid={spec!r}: --search={search} takes exactly two values, the loose and the "
            f"tight end of the bracket (e.g. {axis.name}:64,1); got {len(axis.values)}."
        )
    for value in axis.values:
        if not (math.isfinite(value) and value > 0):
            raise GridError(
                f"--grid={spec!r}: a bracket end must be finite and > 0 (the search bisects "
                f"on a log scale); got {axis.label(value)}."
            )
    return Axis(axis.name, tuple(sorted(axis.values)))


def check_resolution(resolution):
    """A ``--resolution`` that a search can stop at: a finite ratio > 1."""
    if not (isinstance(resolution, (int, float)) and math.isfinite(resolution)):
        raise GridError(f"--resolution must be a finite number > 1, got {resolution!r}.")
    if resolution <= 1:
        raise GridError(
            f"--resolution must be > 1 (the factor between the tightest value within the "
            f"tolerance and the loosest over it at which the search stops), got {resolution:g}."
        )
    return float(resolution)


def log_grid(bracket, resolution):
    """The values a search of ``bracket`` (an `Axis` with its two
    ends) chooses from: ``tight * (loose / tight) ** (j / n)`` for ``j = 0
    .. n``, the fewest ``n`` that puts consecutive values less than a
    factor ``resolution`` apart, each rounded to the fewest significant
    digits (at least 4) that keep them so (names stay readable). The ends
    are the given ones, exactly."""
    tight, loose = bracket.values
    ratio = loose / tight
    steps = max(1, math.ceil(math.log(ratio) / math.log(resolution)))
    while True:
        if steps + 1 > MOST_BRACKET_VALUES:
            raise GridError(
                f"--resolution={resolution:g} is too fine for the bracket {bracket.name}:"
                f"{bracket.label(loose)},{bracket.label(tight)}: over {MOST_BRACKET_VALUES} "
                "values; give a larger --resolution or a narrower bracket."
            )
        exact = [tight * ratio ** (j / steps) for j in range(steps + 1)]
        for digits in range(4, 18):
            values = [tight, *(float(f"{v:.{digits}g}") for v in exact[1:-1]), loose]
            gaps = [b / a for a, b in zip(values[:-1], values[1:], strict=True)]
            if all(1 < gap < resolution for gap in gaps):
                return Axis(bracket.name, tuple(values))
        steps += 1


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training run of the sweep: a grid point (``None`` for the
    baseline) and a seed, with the config it trains."""

    name: str
    point: tuple  # ((axis name, value), ...), empty for the baseline
    seed: int
    config: RunConfig

    @property
    def is_baseline(self):
        return not self.point

    def settings(self):
        return dict(self.point)


def apply_point(base, axes, values):
    """The config of ``base`` at one grid point (one value per axis)."""
    lip, dist = list(base.lip), list(base.dist)
    bounds = {constraint_values.LIPSCHITZ: lip, constraint_values.DISTANCE: dist}
    for axis, value in zip(axes, values, strict=True):
        kind, _, entry = axis.name.partition(".")
        if axis.is_scale:
            bounds[kind][:] = [b * value if math.isfinite(b) else math.inf for b in bounds[kind]]
        else:
            bounds[kind][constraint_values.ENTRIES.index(entry)] = value
    try:
        return base.replace(lip=tuple(lip), dist=tuple(dist))
    except ValueError as error:
        raise GridError(
            f"the grid point {dict(zip([a.name for a in axes], values, strict=True))}"
            f" does not make a valid run: {error}"
        ) from None


def point_name(axes, values):
    return "_".join(f"{axis.name}={axis.label(v)}" for axis, v in zip(axes, values, strict=True))


def check_seeds(seeds):
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise GridError(f"--seeds must be an integer >= 1, got {seeds!r}.")


def trials(base, axes, seeds):
    """Every trial of the sweep: the baseline and every grid point, each
    with ``seeds`` seeds (``base.seed``, ``base.seed + 1``, ...)."""
    check_seeds(seeds)
    unconstrained = base.replace(lip=(math.inf,) * 4, dist=(math.inf,) * 4)
    found = []
    for offset in range(seeds):
        seed = base.seed + offset
        found.append(Trial(f"{BASELINE}_seed{seed}", (), seed, unconstrained.replace(seed=seed)))
        for values in itertools.product(*(axis.values for axis in axes)):
            config = apply_point(base, axes, values).replace(seed=seed)
            point = tuple((axis.name, v) for axis, v in zip(axes, values, strict=True))
            found.append(Trial(f"{point_name(axes, values)}_seed{seed}", point, seed, config))
    return found
