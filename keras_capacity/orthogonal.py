"""The orthogonal (Euclidean) projection onto ``{Lip(K) <= lip} ∩
{||K - K0||_{2,1} <= dist}`` (SPEC §3): Dykstra's algorithm over the
distance ball, the spectral ball and, for circular convolutions, the
kernel's support, then a feasibility step.

Dense: clipping the singular values of ``K`` at ``lip`` is the exact
projection onto the spectral ball. Circular convolution: the kernel is
embedded in its input grid, where clipping every frequency's singular
values is the exact projection onto the operator's ball
(`keras_capacity.fourier.CircularEmbedding`); the kernel's own
support is a further (linear) set. Pure tensor functions of
`keras_capacity.fourier` and `keras_capacity.projections`, so
they run inside the compiled train step.
"""

import numpy as np
from keras import ops

from keras_capacity import fourier, operators, projections, screen


def project(kernel, initial_kernel, lip, dist, geometry, rounds):
    """The orthogonal projection of ``kernel`` onto ``{Lip <= lip} ∩
    {||K - K0||_{2,1} <= dist}`` by ``rounds`` of Dykstra's algorithm,
    followed by the feasibility step: a radial rescale by the exact norm of
    the operator whose ball was projected onto
    (`keras_capacity.fourier.spectral_norm`) if it is still above
    ``lip``, then the segment toward ``K0`` into the distance ball. Returns
    the kernel. The rescale is skipped where the last set projected onto is
    the spectral ball itself: a Dense kernel, and a circular kernel whose
    taps fill its input grid (the deep layers of the paper's networks).

    For a circular convolution, one round over (distance ball, spectral
    ball, support) carries no increments, so it is the composition of the
    three projections, done on the kernel's own taps
    (`project_kernel`). A
    grouped circular convolution is projected per group, as the
    block-diagonal plain convolution it equals
    (`keras_capacity.operators.ungrouped`).
    """
    if geometry.groups > 1:
        # Block diagonal over the groups: the plain convolution it equals
        # has the same spectral ball and (2,1) norm, and its projections
        # stay block diagonal, so the blocks of its projection are this one's.
        dense_kernel, plain = operators.ungrouped(kernel, geometry)
        dense_initial, _ = operators.ungrouped(initial_kernel, geometry)
        result = project(dense_kernel, dense_initial, lip, dist, plain, rounds)
        return operators.grouped(result, geometry)
    has_lip, has_dist = np.isfinite(lip), np.isfinite(dist)

    def distance_ball(x):
        return initial_kernel + projections.project_l21_ball(x - initial_kernel, dist)

    if geometry.kind == operators.DENSE:
        sets = ([distance_ball] if has_dist else []) + (
            [lambda x: projections.clip_singular_values(x, lip)] if has_lip else []
        )
        # The clipping comes last, so the result is in the spectral ball.
        result = projections.dykstra(kernel, sets, rounds if len(sets) > 1 else 1)
        norm = None
    else:
        embedding = fourier.CircularEmbedding(geometry, kernel.shape)
        if rounds == 1:
            result = distance_ball(kernel) if has_dist else kernel
            if has_lip:
                result = embedding.project_kernel(result, lip)
        else:

            def grid_distance_ball(grid):
                on_support = embedding.restrict(grid)
                projected = embedding.embed(distance_ball(on_support))
                return grid - embedding.project_support(grid) + projected

            sets = ([grid_distance_ball] if has_dist else []) + (
                [lambda g: embedding.project_spectral_ball(g, lip)] if has_lip else []
            )
            sets.append(embedding.project_support)
            result = embedding.restrict(projections.dykstra(embedding.embed(kernel), sets, rounds))
        # Taps that fill the grid leave the clipped kernel clipped; otherwise
        # restricting it to its support may lift its norm a little.
        exact = embedding.covers_grid
        norm = fourier.spectral_norm(result, embedding.geometry) if has_lip and not exact else None
    if norm is not None:
        result = projections.scale_to_lipschitz(result, norm, lip)
    if has_dist:
        result = initial_kernel + projections.shrink_to_l21_ball(result - initial_kernel, dist)
    return result


def project_screened(kernel, initial_kernel, lip, dist, block_screen, state):
    """``(kernel, state)``: the one-round projection of `project`
    (``rounds=1``, a finite ``lip``) of a circular convolution that
    `keras_capacity.screen.applies` to (output side, or stride 1 through
    the adjoint), decomposing only the frequency blocks that the
    `keras_capacity.screen.BlockScreen` cannot certify to lie in the
    ball; ``state`` is the screen's (a kernel and bounds on its blocks),
    returned for the projected kernel. The same steps as `project`:
    the distance ball, the clipping, the feasibility rescale by the exact
    norm where it exceeds ``lip`` (unless the taps fill the grid), the
    segment toward ``K0``."""
    has_dist = np.isfinite(dist)
    if has_dist:
        kernel = initial_kernel + projections.project_l21_ball(kernel - initial_kernel, dist)
    bounds = block_screen.carried(state, kernel)
    clipped, bounds = block_screen.clip(kernel, bounds, lip)
    if block_screen.covers_grid:
        ceiling = projections.as_dtype(lip * (1.0 + screen.INFLATION), bounds.dtype)
        bounds = ops.minimum(bounds, ceiling)
    else:
        bounds = block_screen.carried((kernel, bounds), clipped)
        norm, bounds = block_screen.norm(clipped, bounds, lip)
        scale = ops.minimum(1.0, projections.as_dtype(lip, norm.dtype) / ops.maximum(norm, 1e-30))
        clipped, bounds = clipped * scale, bounds * scale
    if has_dist:
        delta = projections.shrink_to_l21_ball(clipped - initial_kernel, dist)
        shrunk = initial_kernel + delta
        bounds = block_screen.carried((clipped, bounds), shrunk)
        clipped = shrunk
    return clipped, (clipped, bounds)
