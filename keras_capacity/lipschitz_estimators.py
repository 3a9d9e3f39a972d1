"""How :class:`keras_capacity.LipDist` finds ``Lip(K)`` for the radial projection.

An estimator is chosen once, when a constraint is bound to its layer
(:func:`choose`), and has two ways to the number:

* :meth:`~Estimator.in_graph`, inside the compiled train step: a tensor
  function of the kernel and the estimator's state;
* :meth:`~Estimator.exact`, when a projection happens now (``project``,
  a direct call): the converged float64 value of
  :mod:`keras_capacity.exact_norms`.

Both take and return the estimator's state (a tuple of arrays, kept by
``LipDist`` in its variables), so they are pure functions.

* :class:`ExactDense`, for Dense kernels whose smaller side is at most
  :data:`EXACT_DENSE_LIMIT`: the largest singular value from the
  eigenvalues of the smaller Gram matrix; no state.
* :class:`ExactFourier`, for circular convolutions within
  :data:`keras_capacity.fourier.EXACT_COST_LIMIT`: the exact norm by FFT
  (:func:`keras_capacity.fourier.spectral_norm`); no state.
* :class:`TrackedSubspace`, for every other layer (zero-padded
  convolutions above all): subspace iteration on ``A^T A`` over the top
  :data:`TRACKED_DIRECTIONS` singular directions, warm-started from the
  previous step, with a random probe mixed into the weakest direction so
  that no direction is missed for symmetry reasons. Warm, it takes one
  step per projection; eight directions follow the top one through the
  clustered spectra of kernels held at their bound even when every
  optimizer step moves it (four did not: benchmarks/RESULTS.md).
"""

import numpy as np
from keras import ops

from keras_capacity import backend, exact_norms, fourier, operators, projections

# Singular directions tracked by the in-graph subspace iteration; a random
# probe of weight PROBE_WEIGHT is mixed into the weakest of them at every
# projection.
TRACKED_DIRECTIONS = 8
PROBE_WEIGHT = 0.5
# Dense kernels up to this smaller side get the exact norm in the train
# step (one symmetric eigenvalue problem of that size).
EXACT_DENSE_LIMIT = 512


class Estimator:
    """``Lip(K)`` of one layer's operator (its ``geometry``)."""

    def __init__(self, geometry, kernel_shape):
        self.geometry = geometry
        self.kernel_shape = tuple(int(d) for d in kernel_shape)

    def state_shapes(self):
        """``{name: shape}`` of the state variables ``LipDist`` keeps."""
        return {}

    def exact(self, kernel, state):
        """``(sigma, state)``: the converged float64 norm, as a tensor of the
        kernel's dtype."""
        sigma = exact_norms.spectral_norm(ops.convert_to_numpy(kernel), self.geometry)
        return ops.convert_to_tensor(sigma, kernel.dtype), state

    def in_graph(self, kernel, state, step):
        """``(sigma, state)`` as tensors, inside the train step."""
        raise NotImplementedError


class ExactDense(Estimator):
    """The exact spectral norm of a Dense kernel, in the graph: the largest
    eigenvalue of its smaller Gram matrix."""

    def in_graph(self, kernel, state, step):
        return projections.largest_singular_value(kernel), state


class ExactFourier(Estimator):
    """The exact norm of a circular convolution, by FFT, in the graph."""

    def in_graph(self, kernel, state, step):
        return fourier.spectral_norm(kernel, self.geometry), state


class TrackedSubspace(Estimator):
    """Warm-started subspace iteration over the top singular directions.

    In eager calls the directions are refreshed from the converged float64
    top singular vectors (:func:`keras_capacity.exact_norms.top_singular`).
    In the train step the weakest direction is replaced by itself plus a
    random probe (stateless, seeded by the step count, so replicas agree):
    the probe keeps every direction present, where a symmetric start (say a
    constant image under a convolution) would stay in its invariant
    subspace forever.
    """

    def _directions(self):
        size = int(np.prod(self.geometry.input_shape(self.kernel_shape)))
        return min(TRACKED_DIRECTIONS, size)

    def state_shapes(self):
        shape = self.geometry.input_shape(self.kernel_shape)[1:]
        return {"power_vectors": (self._directions(), *shape)}

    def exact(self, kernel, state):
        start = np.asarray(state[0][0]) if state else None
        kernel = ops.convert_to_numpy(kernel)
        sigma, vectors = exact_norms.top_singular(
            kernel, self.geometry, k=self._directions(), v0=start
        )
        return ops.convert_to_tensor(sigma, kernel.dtype), (vectors.astype(kernel.dtype),)

    def in_graph(self, kernel, state, step):
        (block,) = state
        seed = ops.stack([ops.cast(step, "int32"), ops.convert_to_tensor(7, "int32")])
        probe = backend.stateless_normal(ops.shape(block[-1:]), seed, block.dtype)
        weakest = operators.normalized(block[-1:]) + PROBE_WEIGHT * operators.normalized(probe)
        block = ops.concatenate([block[:-1], weakest], axis=0)
        sigma, block = operators.subspace_iteration(kernel, block, self.geometry)
        return sigma, (block,)


def choose(geometry, kernel_shape):
    """The estimator for a layer acting as ``geometry``: exact for Dense
    kernels and circular convolutions within their cost limits, tracked
    otherwise."""
    if geometry.kind == operators.DENSE and min(kernel_shape) <= EXACT_DENSE_LIMIT:
        return ExactDense(geometry, kernel_shape)
    if fourier.has_exact_norm(geometry, kernel_shape):
        return ExactFourier(geometry, kernel_shape)
    return TrackedSubspace(geometry, kernel_shape)
