"""The linear map a kernel computes, its adjoint, and its spectral norm.

A layer's Lipschitz constant is the operator norm ``||A||_2`` of the linear map
``A: x -> layer(x) - bias`` on the layer's *actual* input (SPEC §2). For a
convolution that map depends on more than the kernel: on the input's spatial
size, on the padding, the strides, the dilation and the groups. An
:class:`OperatorGeometry` records exactly that, so that ``A`` and its adjoint
``A^T`` can be applied to single inputs and ``||A||_2`` found by power
iteration on ``A^T A``. Every linear layer Keras has is such a map
(:mod:`keras_capacity.linear_layers` says which kernel and geometry).

Everything here is a pure function of tensors in ``keras.ops`` (the
adjoint through :mod:`keras_capacity.backend`), usable eagerly, inside the
compiled train step and under XLA.
"""

import dataclasses

from keras import ops

from keras_capacity import backend

DENSE = "dense"
CONV2D = "conv2d"
CONV = "conv"
CONV_TRANSPOSE = "conv_transpose"
KINDS = (DENSE, CONV2D, CONV, CONV_TRANSPOSE)
CONV_PADDINGS = ("same", "valid", "circular", "causal")


@dataclasses.dataclass(frozen=True)
class OperatorGeometry:
    """Where a kernel acts: what is needed to apply the layer's linear map.

    Attributes:
        kind: ``"dense"`` (``x @ K``, kernel ``(in, out)``); ``"conv2d"``
            (a 2-D convolution, kernel ``(kh, kw, in / groups, out)``: the
            kind :class:`~keras_capacity.LipDist` constrains and the FFT
            paths know); ``"conv"`` (a convolution over 1, 2 or 3 spatial
            axes, kernel ``(*k, in / groups, out)``); ``"conv_transpose"``
            (Keras's transposed convolution, kernel ``(*k, out, in)``).
        input_size: the spatial size of the input (``(H, W)`` in 2-D).
        strides: one per spatial axis.
        dilation: one per spatial axis.
        padding: ``"same"``, ``"valid"``, ``"circular"`` (periodic padding as
            in :class:`keras_capacity.CircularConv2D`) or ``"causal"``
            (``d (k - 1)`` zeros before, as ``Conv1D``).
        groups: a convolution's groups; output channels ``[g o_g, (g + 1)
            o_g)`` see input channels ``[g i_g, (g + 1) i_g)`` only.
        output_padding: a transposed convolution's, or ``None``.
    """

    kind: str
    input_size: tuple = ()
    strides: tuple = (1, 1)
    dilation: tuple = (1, 1)
    padding: str = "valid"
    groups: int = 1
    output_padding: tuple | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown operator kind {self.kind!r}; expected one of {KINDS}.")
        for name in ("input_size", "strides", "dilation"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.output_padding is not None:
            object.__setattr__(self, "output_padding", tuple(int(v) for v in self.output_padding))
        object.__setattr__(self, "groups", int(self.groups))
        if self.kind == DENSE:
            return
        if self.padding not in CONV_PADDINGS:
            raise ValueError(f"Unknown padding {self.padding!r}; expected one of {CONV_PADDINGS}.")
        ranks = (2,) if self.kind == CONV2D else (1, 2, 3)
        if len(self.input_size) not in ranks or min(self.input_size) < 1:
            raise ValueError(
                f"A {self.kind} operator needs a known input size over {ranks} spatial "
                f"axes; got {self.input_size}."
            )
        for name in ("strides", "dilation", "output_padding"):
            value = getattr(self, name)
            if value is not None and len(value) != self.rank:
                raise ValueError(f"{name} {value} do not match the input size {self.input_size}.")
        if self.padding == "causal" and (self.rank != 1 or self.kind == CONV_TRANSPOSE):
            raise ValueError("Causal padding is for 1-D convolutions only.")
        if self.groups < 1 or (self.groups > 1 and self.kind == CONV_TRANSPOSE):
            raise ValueError(f"groups={self.groups}: groups are >= 1 (1 if transposed).")

    @property
    def rank(self):
        """The number of spatial axes (0 for a dense map)."""
        return len(self.input_size)

    def input_shape(self, kernel_shape):
        """Shape of one input to ``A`` (batch of one), for this kernel."""
        if self.kind == DENSE:
            return (1, int(kernel_shape[0]))
        if self.kind == CONV_TRANSPOSE:
            return (1, *self.input_size, int(kernel_shape[-1]))
        return (1, *self.input_size, int(kernel_shape[-2]) * self.groups)

    def get_config(self):
        config = {
            "kind": self.kind,
            "input_size": list(self.input_size),
            "strides": list(self.strides),
            "dilation": list(self.dilation),
            "padding": self.padding,
        }
        if self.groups != 1:
            config["groups"] = self.groups
        if self.output_padding is not None:
            config["output_padding"] = list(self.output_padding)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def same_padding(size, kernel_size, stride, dilation):
    """``(before, after)`` zeros of ``padding="same"`` on one axis, as
    TensorFlow and JAX pad: ``max((ceil(n / s) - 1) s + k_eff - n, 0)`` in
    all, the odd one after."""
    span = dilation * (kernel_size - 1) + 1
    total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def circular_pad(x, kernel_size, dilation, spatial_axes=None):
    """Pads ``x`` periodically along its spatial axes (by default the
    ``len(kernel_size)`` axes after the batch axis).

    A kernel spanning ``k_eff = d (k - 1) + 1`` pixels gets
    ``(k_eff - 1) // 2`` wrapped pixels before and the rest after, so that a
    valid convolution with stride ``s`` then gives ``ceil(size / s)`` outputs
    (as ``"same"`` does). Indices wrap modulo the size as often as needed, so
    kernels larger than the input work too.
    """
    if spatial_axes is None:
        spatial_axes = tuple(range(1, len(kernel_size) + 1))
    for axis, k, d in zip(spatial_axes, kernel_size, dilation, strict=True):
        span = d * (k - 1) + 1
        size = x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]
        indices = (ops.arange(size + span - 1) - (span - 1) // 2) % size
        x = ops.take(x, indices, axis=axis)
    return x


def _zero_pad(x, geometry, kernel_size):
    """``x`` padded with the zeros of ``"same"`` or ``"causal"`` padding."""
    pads = [[0, 0]]
    for size, k, s, d in zip(
        geometry.input_size, kernel_size, geometry.strides, geometry.dilation, strict=True
    ):
        if geometry.padding == "causal":
            pads.append([d * (k - 1), 0])
        else:
            pads.append(list(same_padding(size, k, s, d)))
    return ops.pad(x, [*pads, [0, 0]])


def _convolution(kernel, x, geometry):
    """The (grouped) convolution of ``x``, with explicit padding where
    ``ops.conv`` has none (circular, causal) and at stride 1 then subsampled
    where strides and dilations are both above 1 (which depthwise and
    separable layers allow and ``ops.conv`` does not). One input channel
    per group is a depthwise convolution, and runs as one (TensorFlow
    compiles other grouped convolutions on the CPU with XLA)."""
    kernel_size = tuple(kernel.shape[: geometry.rank])
    padding, strides = geometry.padding, geometry.strides
    if padding == "circular":
        x, padding = circular_pad(x, kernel_size, geometry.dilation), "valid"
    subsample = max(strides) > 1 and max(geometry.dilation) > 1
    if padding == "causal" or (padding == "same" and subsample):
        x, padding = _zero_pad(x, geometry, kernel_size), "valid"
    step = (1,) * geometry.rank if subsample else strides
    if geometry.groups > 1 and kernel.shape[-2] == 1 and geometry.rank < 3:
        depthwise = ops.reshape(kernel, (*kernel_size, geometry.groups, -1))
        y = ops.depthwise_conv(x, depthwise, step, padding, dilation_rate=geometry.dilation)
    else:
        y = ops.conv(x, kernel, strides=step, padding=padding, dilation_rate=geometry.dilation)
    if subsample:
        return y[(slice(None), *(slice(None, None, s) for s in strides))]
    return y


def apply_operator(kernel, x, geometry):
    """``A x``: the layer's linear map (no bias) applied to ``x``."""
    if geometry.kind == DENSE:
        return ops.matmul(x, kernel)
    if geometry.kind == CONV_TRANSPOSE:
        return ops.conv_transpose(
            x,
            kernel,
            strides=geometry.strides,
            padding=geometry.padding,
            output_padding=geometry.output_padding,
            dilation_rate=geometry.dilation,
        )
    return _convolution(kernel, x, geometry)


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
