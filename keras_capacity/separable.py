"""The radial projection of a separable layer: its two kernels, one map.

A ``SeparableConv1D``/``2D`` computes depthwise ``D`` then pointwise ``P``,
which is one convolution with the composed kernel ``C(D, P)``
(`keras_capacity.linear_layers.compose`). What the library reports
for it (``kc.lipschitz``, ``kc.distance``, ``kc.measure``) is that map's:
``Lip(C)`` and ``||C - C0||_{2,1}`` over ``C``'s input channels, with
``C0 = C(D0, P0)``. ``LipDist`` constrains exactly these two numbers,
moving both kernels:

* Lipschitz: ``P`` is scaled by ``lip / Lip(C)`` when above. ``C`` is
  linear in ``P``, so this is the composed map's radial projection.
* distance: both kernels move back along the segment toward ``(D0, P0)``,
  ``(D0 + t (D - D0), P0 + t (P - P0))``, to the largest ``t`` in
  ``[0, 1]`` whose composed kernel is within ``dist`` (bisection: the
  distance is 0 at ``t = 0`` and a quadratic in ``t`` inside the norm, so
  each trial is a weighted sum of four composed kernels, no operator).
* with both: ``C`` is bilinear, so along that segment ``Lip(C)`` is not
  convex and can rise a little above ``lip`` (by a term of second order in
  the step). Rescaling and retracting alternate until the Lipschitz
  constant is within ``lip (1 + FEASIBILITY_SLACK)`` with the distance met
  exactly, at most `FEASIBILITY_ROUNDS` times (in practice one or
  two); failing that, the kernels return to ``(D0, P0)``, which satisfies
  both. The result satisfies both bounds.

There is no orthogonal (nearest-kernel) mode: the set of composed kernels
is not convex in the pair ``(D, P)``, and ``LipDist`` refuses
``mode="orthogonal"`` for separable layers at ``bind``.
"""

import math

from keras import ops

from keras_capacity import linear_layers, projections

# Bisection steps for the distance retraction (2^-30 of the segment).
BISECTION_STEPS = 30
# Alternations of rescaling and retraction after the rounds, at most.
FEASIBILITY_ROUNDS = 8
# The Lipschitz constant the alternation stops at, relative to lip.
FEASIBILITY_SLACK = 1e-4


def retract(depthwise, pointwise, initial_depthwise, initial_pointwise, dist):
    """``(D, P)`` moved toward ``(D0, P0)`` along their segment to the
    largest ``t`` whose composed kernel is within ``dist`` of ``C0``
    (``t = 1``, no move, when it already is)."""
    compose = linear_layers.compose
    c00 = compose(initial_depthwise, initial_pointwise)
    c11 = compose(depthwise, pointwise)
    cross = compose(initial_depthwise, pointwise) + compose(depthwise, initial_pointwise)
    # C(t) - C0 = t a + t^2 b.
    a, b = cross - 2.0 * c00, c11 - cross + c00
    radius = projections.as_dtype(dist, depthwise.dtype)

    def within(t):
        return projections.l21_norm(t * a + t * t * b) <= radius

    def bisect(_, bounds):
        low, high = bounds
        middle = (low + high) / 2.0
        inside = within(middle)
        return ops.where(inside, middle, low), ops.where(inside, high, middle)

    zero, one = ops.zeros((), depthwise.dtype), ops.ones((), depthwise.dtype)
    low, _ = ops.fori_loop(0, BISECTION_STEPS, bisect, (zero, one))
    t = ops.where(within(one), one, low)
    return (
        initial_depthwise + t * (depthwise - initial_depthwise),
        initial_pointwise + t * (pointwise - initial_pointwise),
    )


def project(
    depthwise,
    pointwise,
    initial_depthwise,
    initial_pointwise,
    lip,
    dist,
    rounds,
    lipschitz,
    state,
    compiled,
):
    """``(depthwise, pointwise, estimator state)``, projected as the module
    docstring says: ``rounds`` alternations (one without both bounds) of the
    Lipschitz rescale (``Lip(C)`` from ``lipschitz(C, state) -> (sigma,
    state)``) and the distance retraction, then the feasibility
    alternation. ``compiled`` says whether this runs inside the compiled
    train step (the alternation is then a graph loop) or now (a Python
    loop, so that an estimator may leave the graph)."""
    has_lip, has_dist = math.isfinite(lip), math.isfinite(dist)
    compose = linear_layers.compose
    initial = (initial_depthwise, initial_pointwise)

    def rescale(depthwise, pointwise, sigma):
        return projections.scale_to_lipschitz(pointwise, sigma, lip)

    for _ in range(rounds if has_lip and has_dist else 1):
        if has_lip:
            sigma, state = lipschitz(compose(depthwise, pointwise), state)
            pointwise = rescale(depthwise, pointwise, sigma)
        if has_dist:
            depthwise, pointwise = retract(depthwise, pointwise, *initial, dist)
    if not (has_lip and has_dist):
        return depthwise, pointwise, state

    limit = lip * (1.0 + FEASIBILITY_SLACK)
    sigma, state = lipschitz(compose(depthwise, pointwise), state)

    def step(depthwise, pointwise, sigma, state):
        pointwise = rescale(depthwise, pointwise, sigma)
        depthwise, pointwise = retract(depthwise, pointwise, *initial, dist)
        sigma, state = lipschitz(compose(depthwise, pointwise), state)
        return depthwise, pointwise, sigma, state

    if compiled:

        def above(i, depthwise, pointwise, sigma, state):
            return ops.logical_and(i < FEASIBILITY_ROUNDS, sigma > limit)

        def body(i, depthwise, pointwise, sigma, state):
            return (i + 1, *step(depthwise, pointwise, sigma, state))

        start = (ops.convert_to_tensor(0), depthwise, pointwise, sigma, tuple(state))
        _, depthwise, pointwise, sigma, state = ops.while_loop(above, body, start)
    else:
        for _ in range(FEASIBILITY_ROUNDS):
            if float(sigma) <= limit:
                break
            depthwise, pointwise, sigma, state = step(depthwise, pointwise, sigma, state)
    failed = sigma > limit
    return (
        ops.where(failed, initial_depthwise, depthwise),
        ops.where(failed, initial_pointwise, pointwise),
        state,
    )
