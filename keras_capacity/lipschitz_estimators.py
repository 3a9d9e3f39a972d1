"""How `keras_capacity.LipDist` finds ``Lip(K)`` for the radial projection.

An estimator is chosen once, when a constraint is bound to its layer
(`choose`), and has two ways to the number:

* `in_graph`, inside the compiled train step: a tensor
  function of the kernel and the estimator's state;
* `exact`, when a projection happens now (``project``,
  a direct call): the converged float64 value of
  `keras_capacity.exact_norms`.

Both take and return the estimator's state (a tuple of arrays, kept by
``LipDist`` in its variables), so they are pure functions.

* `ExactDense`, for Dense kernels whose smaller side is at most
  `EXACT_DENSE_LIMIT`: the largest singular value from the
  eigenvalues of the smaller Gram matrix; no state.
* `ExactPointwise`, for ``1 x 1`` convolutions (``groups=1``, any
  padding, strides, dimension): the map applies the ``in x out`` matrix
  at every (kept) pixel, so its norm is that matrix's, found as for Dense.
* `ExactFourier`, for circular convolutions (grouped ones too)
  within `keras_capacity.fourier.EXACT_COST_LIMIT`: the exact norm
  by FFT (`keras_capacity.fourier.spectral_norm`); where the blocks
  can be screened (`keras_capacity.screen.applies`), only those that
  may exceed ``lip`` are decomposed, with the screen's bounds as state.
* `TrackedSubspace`, for every other layer (zero-padded
  convolutions above all, depthwise, grouped, 1-D, 3-D, transposed and
  separable ones included: the iteration runs on the layer's own map,
  whatever its geometry): a block eigensolver on ``A^T A`` (LOBPCG steps,
  `keras_capacity.operators.subspace_iteration`) over the top
  `TRACKED_DIRECTIONS` singular directions, warm-started from the
  previous step, with a random probe mixed into the weakest direction so
  that no direction is missed for symmetry reasons. Warm, it takes one
  step per projection; eight directions follow the top one through the
  clustered spectra of kernels held at their bound even when every
  optimizer step moves it (four did not: benchmarks/RESULTS.md). A grouped
  operator (depthwise: one group per channel) is block diagonal, and its
  directions are tracked per group, four in each: with one set for the
  whole operator, a step that lifts a group outside the few tracked ones
  went unseen (a MobileNetV2 depthwise layer ended 0.4% above its bound
  after two SGD steps of size 1). A one-channel 3x3 convolution's top
  singular values cluster tightly, which plain subspace iteration
  followed too slowly (0.9% above after such steps); the LOBPCG steps
  converge in tens of steps where it needed hundreds.
"""

import numpy as np
from keras import ops

from keras_capacity import backend, exact_norms, fourier, operators, projections, screen

# Singular directions tracked by the in-graph block eigensolver; a random
# probe of weight PROBE_WEIGHT is mixed into the weakest of them at every
# projection.
TRACKED_DIRECTIONS = 8
# For a grouped operator, the directions tracked in each group.
GROUP_DIRECTIONS = 4
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


class ExactPointwise(Estimator):
    """The exact norm of a ``1 x 1`` convolution: the spectral norm of its
    ``in x out`` matrix (the map applies it at every pixel it keeps, and
    keeps at least one), in the graph as for Dense and now by SVD."""

    def _matrix(self, kernel):
        return ops.reshape(kernel, self.kernel_shape[-2:])

    def exact(self, kernel, state):
        matrix = np.asarray(ops.convert_to_numpy(kernel), np.float64)
        matrix = matrix.reshape(self.kernel_shape[-2:])
        return ops.convert_to_tensor(np.linalg.norm(matrix, 2), kernel.dtype), state

    def in_graph(self, kernel, state, step):
        return projections.largest_singular_value(self._matrix(kernel)), state


def is_pointwise(geometry, kernel_shape):
    """Whether the map is a ``1 x 1`` (any dimension) ungrouped convolution."""
    return (
        geometry.kind in (operators.CONV2D, operators.CONV)
        and geometry.groups == 1
        and all(int(k) == 1 for k in kernel_shape[:-2])
        and min(kernel_shape[-2:]) <= EXACT_DENSE_LIMIT
    )


class ExactFourier(Estimator):
    """The exact norm of a circular convolution, by FFT, in the graph.

    With a `BlockScreen` (``lip`` given and
    the blocks screenable), the train step's value is exact where it
    exceeds ``lip`` and an upper bound at most ``lip`` otherwise (where the
    radial projection leaves the kernel as it is), and only the blocks the
    screen cannot certify are decomposed. Its state is then the screen's,
    for the kernel as the radial projection rescales it.
    """

    def __init__(self, geometry, kernel_shape, lip=None):
        super().__init__(geometry, kernel_shape)
        self.lip = lip
        self.screen = None if lip is None else screen.choose(geometry, self.kernel_shape)

    def state_shapes(self):
        return {} if self.screen is None else self.screen.state_shapes()

    def in_graph(self, kernel, state, step):
        if self.screen is None:
            return fourier.spectral_norm(kernel, self.geometry), state
        bounds = self.screen.carried(state, kernel)
        norm, bounds = self.screen.norm(kernel, bounds, self.lip)
        scale = ops.minimum(
            1.0, projections.as_dtype(self.lip, norm.dtype) / ops.maximum(norm, 1e-30)
        )
        return norm, (kernel * scale, bounds * scale)


class TrackedSubspace(Estimator):
    """A warm-started block eigensolver over the top singular directions.

    In eager calls the directions are refreshed from the converged float64
    top singular vectors (`keras_capacity.exact_norms.top_singular`;
    every group's, `grouped_top_singular`,
    for a grouped operator).
    In the train step the weakest direction is replaced by itself plus a
    random probe (stateless, seeded by the step count, so replicas agree):
    the probe keeps every direction present, where a symmetric start (say a
    constant image under a convolution) would stay in its invariant
    subspace forever.
    """

    def _directions(self):
        """`TRACKED_DIRECTIONS` (`GROUP_DIRECTIONS` in each
        group of a grouped operator), at most a group's input dimension."""
        size = int(np.prod(self.geometry.input_shape(self.kernel_shape)))
        wanted = TRACKED_DIRECTIONS if self.geometry.groups == 1 else GROUP_DIRECTIONS
        return min(wanted, size // self.geometry.groups)

    def state_shapes(self):
        shape = self.geometry.input_shape(self.kernel_shape)[1:]
        return {"power_vectors": (self._directions(), *shape)}

    def exact(self, kernel, state):
        kernel = ops.convert_to_numpy(kernel)
        if self.geometry.groups == 1:
            start = np.asarray(state[0][0]) if state else None
            sigma, vectors = exact_norms.top_singular(
                kernel, self.geometry, k=self._directions(), v0=start
            )
        else:  # every group's directions, warm from the tracked ones
            sigma, vectors = exact_norms.grouped_top_singular(
                kernel, self.geometry, self._directions(), np.asarray(state[0]) if state else None
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


def choose(geometry, kernel_shape, lip=None):
    """The estimator for a layer acting as ``geometry`` (its map kernel of
    ``kernel_shape``): exact for Dense kernels, ``1 x 1`` convolutions and
    circular convolutions within their cost limits (screened against
    ``lip``, where given), tracked otherwise."""
    if geometry.kind == operators.DENSE and min(kernel_shape) <= EXACT_DENSE_LIMIT:
        return ExactDense(geometry, kernel_shape)
    if is_pointwise(geometry, kernel_shape):
        return ExactPointwise(geometry, kernel_shape)
    if fourier.has_exact_norm(geometry, kernel_shape):
        return ExactFourier(geometry, kernel_shape, lip)
    return TrackedSubspace(geometry, kernel_shape)
