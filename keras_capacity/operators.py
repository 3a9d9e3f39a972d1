"""The linear map a kernel computes, its adjoint, and its spectral norm.

A layer's Lipschitz constant is the operator norm ``||A||_2`` of the linear map
``A: x -> layer(x) - bias`` on the layer's *actual* input (SPEC §2). For a
convolution that map depends on more than the kernel: on the input's spatial
size ``H x W``, on the padding, the strides and the dilation. An
:class:`OperatorGeometry` records exactly that, so that ``A`` and its adjoint
``A^T`` can be applied to single inputs and ``||A||_2`` found by power
iteration on ``A^T A``.

Everything here is a pure function of tensors in ``keras.ops`` (the
adjoint through :mod:`keras_capacity.backend`), usable eagerly, inside the
compiled train step and under XLA.
"""

import dataclasses

from keras import ops

from keras_capacity import backend

DENSE = "dense"
CONV2D = "conv2d"
CONV_PADDINGS = ("same", "valid", "circular")


@dataclasses.dataclass(frozen=True)
class OperatorGeometry:
    """Where a kernel acts: what is needed to apply the layer's linear map.

    Attributes:
        kind: ``"dense"`` (``x @ K``, kernel ``(in, out)``) or ``"conv2d"``
            (kernel ``(kh, kw, in, out)``).
        input_size: ``(H, W)``, the spatial size of the convolution's input.
        strides: ``(s_h, s_w)``.
        dilation: ``(d_h, d_w)``.
        padding: ``"same"``, ``"valid"`` or ``"circular"`` (periodic padding
            as in :class:`keras_capacity.CircularConv2D`).
    """

    kind: str
    input_size: tuple = ()
    strides: tuple = (1, 1)
    dilation: tuple = (1, 1)
    padding: str = "valid"

    def __post_init__(self):
        if self.kind not in (DENSE, CONV2D):
            raise ValueError(f"Unknown operator kind {self.kind!r}.")
        if self.kind == CONV2D:
            if self.padding not in CONV_PADDINGS:
                raise ValueError(
                    f"Unknown padding {self.padding!r}; expected one of {CONV_PADDINGS}."
                )
            if len(self.input_size) != 2 or min(self.input_size) < 1:
                raise ValueError(
                    f"A convolution needs a known input size (H, W); got {self.input_size}."
                )
        for name in ("input_size", "strides", "dilation"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    def input_shape(self, kernel_shape):
        """Shape of one input to ``A`` (batch of one), for this kernel."""
        if self.kind == DENSE:
            return (1, int(kernel_shape[0]))
        return (1, *self.input_size, int(kernel_shape[2]))

    def get_config(self):
        return {
            "kind": self.kind,
            "input_size": list(self.input_size),
            "strides": list(self.strides),
            "dilation": list(self.dilation),
            "padding": self.padding,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def circular_pad(x, kernel_size, dilation, spatial_axes=(1, 2)):
    """Pads ``x`` periodically along its two spatial axes.

    A kernel spanning ``k_eff = d (k - 1) + 1`` pixels gets
    ``(k_eff - 1) // 2`` wrapped pixels before and the rest after, so that a
    valid convolution with stride ``s`` then gives ``ceil(size / s)`` outputs
    (as ``"same"`` does). Indices wrap modulo the size as often as needed, so
    kernels larger than the input work too.
    """
    for axis, k, d in zip(spatial_axes, kernel_size, dilation, strict=True):
        span = d * (k - 1) + 1
        size = x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]
        indices = (ops.arange(size + span - 1) - (span - 1) // 2) % size
        x = ops.take(x, indices, axis=axis)
    return x


def apply_operator(kernel, x, geometry):
    """``A x``: the layer's linear map (no bias) applied to ``x``."""
    if geometry.kind == DENSE:
        return ops.matmul(x, kernel)
    padding = geometry.padding
    if geometry.padding == "circular":
        x = circular_pad(x, kernel.shape[:2], geometry.dilation)
        padding = "valid"
    return ops.conv(
        x, kernel, strides=geometry.strides, padding=padding, dilation_rate=geometry.dilation
    )


def apply_adjoint(kernel, y, geometry):
    """``A^T y``, the gradient of ``<A x, y>`` with respect to ``x``."""
    shape = geometry.input_shape(kernel.shape)[1:]
    return backend.linear_adjoint(lambda x: apply_operator(kernel, x, geometry), shape, y, y.dtype)


def normalized(v):
    """``v / ||v||`` (zero stays zero)."""
    return v / ops.maximum(ops.sqrt(ops.sum(ops.square(v))), 1e-30)


def _flat(x):
    return ops.reshape(x, (ops.shape(x)[0], -1))


def _orthonormal_rows(block):
    """Orthonormalizes the flattened rows of ``block`` by SVQB (Stathopoulos
    & Wu, SIAM J. Sci. Comput. 2002), twice: the rows' small Gram matrix,
    scaled to a unit diagonal, is diagonalized and its eigenvalues (clipped
    below at a tiny fraction of the largest, for rows that are nearly
    dependent) whiten the rows. Two ``b x b`` eigendecompositions and a few
    products, where a Householder QR of the tall ``n x b`` matrix costs
    several times a convolution of the block."""
    flat = _flat(block)
    for _ in range(2):
        gram = ops.matmul(flat, ops.transpose(flat))
        scale = 1.0 / ops.sqrt(ops.maximum(ops.diagonal(gram), 1e-30))
        values, vectors = ops.eigh(gram * scale[:, None] * scale[None, :])
        values = ops.maximum(values, 1e-7 * ops.max(values))
        whitening = ops.transpose(vectors) / ops.sqrt(values)[:, None]
        flat = ops.matmul(whitening * scale[None, :], flat)
    return ops.reshape(flat, ops.shape(block))


def _rayleigh_ritz(block, image):
    """Rotates an orthonormal ``block`` (and its image ``A block``) onto the
    Ritz vectors of ``A^T A``, largest first; returns the Ritz values
    (``||A v||^2`` of each rotated vector, largest first) with them."""
    flat_image = _flat(image)
    values, vectors = ops.eigh(ops.matmul(flat_image, ops.transpose(flat_image)))
    rotation = ops.flip(ops.transpose(vectors), axis=0)
    rotated = ops.reshape(ops.matmul(rotation, _flat(block)), ops.shape(block))
    rotated_image = ops.reshape(ops.matmul(rotation, flat_image), ops.shape(image))
    return ops.flip(values, axis=0), rotated, rotated_image


def subspace_iteration(kernel, block, geometry, min_steps=1, max_steps=50, rtol=1e-5):
    """Estimates ``||A||_2`` by subspace iteration on ``A^T A``, warm-started.

    ``block`` holds ``b`` start vectors (rows). Each step maps them through
    ``A^T A``, orthonormalizes them (QR) and rotates them onto their Ritz
    vectors (Rayleigh-Ritz on the ``b x b`` matrix ``(A V)(A V)^T``). The
    largest Ritz value ``sigma^2`` is a lower bound on ``||A||_2^2`` that
    converges at the rate ``(sigma_{b+1} / sigma_1)^2`` per step. Tracking
    the top ``b`` singular directions, not one, means that when training
    lets another direction overtake the top one, the estimate follows at
    once instead of after many power steps. Iteration stops once the sum of
    the largest ``b - 1`` Ritz values changes by less than ``rtol``
    (relative), after at least ``min_steps`` and at most ``max_steps`` steps:
    watching them, not only the largest, keeps iterating while a direction
    that is about to overtake the top one is still converging; the weakest
    is left out, because a caller may put a random probe there
    (:class:`keras_capacity.lipschitz_estimators.TrackedSubspace`), and
    watching it would cost several steps in every call for nothing.

    Args:
        kernel: the layer's kernel.
        block: ``(b, *geometry.input_shape(kernel.shape)[1:])`` start vectors.
        geometry: an :class:`OperatorGeometry`.
        min_steps: the fewest steps to take (at least one is taken).
        max_steps: the most steps to take.
        rtol: the relative change of the watched Ritz values' sum that ends it.

    Returns:
        ``(sigma, block)``: the estimate and the orthonormal Ritz vectors,
        largest first, to start the next call from.
    """
    watched = max(int(block.shape[0]) - 1, 1)

    def iterate(block, image):
        block = _orthonormal_rows(apply_adjoint(kernel, image, geometry))
        return _rayleigh_ritz(block, apply_operator(kernel, block, geometry))

    def not_converged(i, values, previous, block, image):
        total = ops.sum(values[:watched])
        changing = ops.abs(total - previous) > rtol * total
        return ops.logical_and(i < max_steps, ops.logical_or(i < min_steps, changing))

    def body(i, values, previous, block, image):
        new_values, block, image = iterate(block, image)
        return i + 1, new_values, ops.sum(values[:watched]), block, image

    block = _orthonormal_rows(ops.cast(block, kernel.dtype))
    values, block, image = _rayleigh_ritz(block, apply_operator(kernel, block, geometry))
    start = (
        ops.convert_to_tensor(0),
        values,
        ops.convert_to_tensor(-1.0, kernel.dtype),
        block,
        image,
    )
    _, values, _, block, _ = ops.while_loop(not_converged, body, start)
    return ops.sqrt(ops.maximum(values[0], 0.0)), block
