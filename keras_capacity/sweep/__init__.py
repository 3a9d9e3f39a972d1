"""Measuring excess capacity: the constraint sweep (SPEC §8).

    python -m keras_capacity.sweep --flagfile=examples/sweep_demo.flags --workdir=runs/sweep_demo
    keras-capacity-sweep ...        (the same, installed)

One training run per point of a grid over the constraint entries, plus the
unconstrained baseline, each with ``--seeds`` seeds and each an ordinary,
resumable run directory; then ``sweep.json``, ``sweep.md`` and
``sweep.png``: test error against each swept value, the tolerance band
around the baseline, the test-error bounds, and the excess-capacity
estimate (:mod:`keras_capacity.sweep.results`). Trials run in one process
or on many through KerasTuner (:mod:`keras_capacity.sweep.engine`); the
grid is :mod:`keras_capacity.sweep.grid`.
"""
