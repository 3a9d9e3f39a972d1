"""The radial projection onto ``{Lip(K) <= lip} ∩ {||K - K0||_{2,1} <= dist}``
(SPEC §3, the reference's default "Lipschitz via power iteration"), as a
pure function beside `keras_capacity.orthogonal.project`."""

import math

from keras_capacity import projections


def project(kernel, initial_kernel, lip, dist, rounds, lipschitz, state, axis=-2):
    """``(projected kernel, estimator state)``.

    ``rounds`` alternating rounds (one without both constraints): the
    Euclidean projection onto the distance ball (group soft-thresholding),
    then ``K * lip / Lip(K)`` when ``Lip(K) > lip``, with ``Lip(K)`` from
    ``lipschitz(kernel, state) -> (sigma, state)`` (an estimator of
    `keras_capacity.lipschitz_estimators`, exact or tracked). With both
    constraints a feasibility step follows: if the distance still exceeds
    ``dist``, the kernel moves along the segment toward ``K0`` to the
    nearest point inside the ball; the Lipschitz constant is convex and
    both ends of that segment satisfy it, so the result satisfies both.
    The (2,1) norm is taken over the input ``axis`` of the kernel's layout
    (`keras_capacity.linear_layers.input_axis`).
    """
    has_lip, has_dist = math.isfinite(lip), math.isfinite(dist)
    for _ in range(rounds if has_lip and has_dist else 1):
        if has_dist:
            delta = projections.project_l21_ball(kernel - initial_kernel, dist, axis)
            kernel = initial_kernel + delta
        if has_lip:
            sigma, state = lipschitz(kernel, state)
            kernel = projections.scale_to_lipschitz(kernel, sigma, lip)
    if has_lip and has_dist:
        delta = projections.shrink_to_l21_ball(kernel - initial_kernel, dist, axis)
        kernel = initial_kernel + delta
    return kernel, state
