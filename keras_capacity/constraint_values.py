"""The values of Lipschitz and distance constraints, validated in one place.

Inside the library "no constraint" is always ``math.inf``. Users may also
write ``None`` (Python), and in the four-entry lists of the models and the
training program ``-1``, ``"inf"`` or ``"none"`` (as the reference's
``--lip``/``--dist`` flags do); `constraint_list` turns those into
``inf`` once, at the boundary, and `check_bound` validates every
single value, for `keras_capacity.LipDist` as for the lists.

A Lipschitz bound must be ``> 0``: a bound of 0 would force the layer to be
the zero map. A distance bound may be ``0``, which freezes the kernel at
``K0``.
"""

import math

LIPSCHITZ = "lip"
DISTANCE = "dist"
ENTRIES = ("first", "inner", "shortcut", "classifier")
_NO_CONSTRAINT_WORDS = ("inf", "none", "-1")


def check_bound(value, kind, where):
    """``value`` as a float bound of ``kind`` (`LIPSCHITZ` or
    `DISTANCE`), ``inf`` for ``None``; a ``ValueError`` that names
    ``where`` otherwise.

    Lipschitz bounds must be ``> 0``, distance bounds ``>= 0``; both may be
    ``inf`` (no constraint).
    """
    if kind not in (LIPSCHITZ, DISTANCE):
        raise ValueError(f"Unknown constraint kind {kind!r}; expected 'lip' or 'dist'.")
    if value is None:
        return math.inf
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}.") from None
    if kind == LIPSCHITZ:
        if math.isnan(number) or number <= 0:
            raise ValueError(
                f"{where} must be > 0 or inf (no constraint), got {value!r}: a Lipschitz "
                "bound of 0 would make the layer the zero map."
            )
    elif math.isnan(number) or number < 0:
        raise ValueError(
            f"{where} must be >= 0 or inf (no constraint), got {value!r}; 0 freezes the "
            "kernel at K0."
        )
    return number


def _entry(value):
    """One list entry with the list spellings of "no constraint" mapped to inf."""
    if value is None:
        return math.inf
    if isinstance(value, str) and value.strip().lower() in _NO_CONSTRAINT_WORDS:
        return math.inf
    if not isinstance(value, (bool, str)):
        try:
            if float(value) == -1:
                return math.inf
        except (TypeError, ValueError):
            pass
    return value


def constraint_list(name, values, kind):
    """The four bounds (first conv, convs inside blocks, shortcut,
    classifier) of ``values`` as floats, ``inf`` where unconstrained.

    ``-1``, ``None``, ``"inf"``, ``"none"`` and ``inf`` mean unconstrained;
    every other entry goes through `check_bound`. Another length, a
    non-number or an out-of-range value is a ``ValueError`` naming ``name``.
    """
    if isinstance(values, str):
        values = values.split(",")
    try:
        entries = list(values)
    except TypeError:
        entries = None
    if entries is None or len(entries) != len(ENTRIES):
        raise ValueError(
            f"{name} must have four entries (first conv, convs inside blocks, "
            f"shortcut, classifier), got {values!r}."
        )
    return tuple(
        check_bound(_entry(entry), kind, f"{name} entry {index + 1} ({ENTRIES[index]})")
        for index, entry in enumerate(entries)
    )


def format_bound(value):
    """A bound as the command line writes it (``-1`` for no constraint),
    exactly: ``float(format_bound(v)) == v``."""
    if value == math.inf:
        return "-1"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
