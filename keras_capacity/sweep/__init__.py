"""Measuring excess capacity: the constraint sweep (SPEC §8).

    make sweep        (a bisection: examples/sweep_bisect.flags)
    make sweep-grid   (a grid: examples/sweep_demo.flags)
    python -m keras_capacity.sweep --flagfile=FLAGS --workdir=DIR
    keras-capacity-sweep ...        (the same, installed)

Training runs over the constraint entries, plus the unconstrained baseline,
each with ``--seeds`` seeds and each an ordinary, resumable run directory:
every point of a grid, or only those a search needs to find the boundary
(a bisection on a log scale, k-section with k workers, one bisection per
row for two axes: `keras_capacity.sweep.search`). Then ``sweep.json``,
``sweep.md`` and ``sweep.png``: test error against each swept value, the
tolerance band around the baseline, the test-error bounds, and the
excess-capacity estimate (`keras_capacity.sweep.results`). Trials run
in one process or on many through KerasTuner
(`keras_capacity.sweep.engine`); the grid is
`keras_capacity.sweep.grid`.
"""
