"""The linear map a kernel computes, its adjoint, and its spectral norm.

A layer's Lipschitz constant is the operator norm ``||A||_2`` of the linear map
``A: x -> layer(x) - bias`` on the layer's *actual* input (SPEC §2). For a
convolution that map depends on more than the kernel: on the input's spatial
size, on the padding, the strides, the dilation and the groups. An
`OperatorGeometry` records exactly that, so that ``A`` and its adjoint
``A^T`` can be applied to single inputs and ``||A||_2`` found by power
iteration on ``A^T A``. Every linear layer Keras has is such a map
(`keras_capacity.linear_layers` says which kernel and geometry).

Everything here is a pure function of tensors in ``keras.ops`` (the
adjoint through `keras_capacity.backend`), usable eagerly, inside the
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
            kind `LipDist` constrains and the FFT
            paths know); ``"conv"`` (a convolution over 1, 2 or 3 spatial
            axes, kernel ``(*k, in / groups, out)``); ``"conv_transpose"``
            (Keras's transposed convolution, kernel ``(*k, out, in)``).
        input_size: the spatial size of the input (``(H, W)`` in 2-D).
        strides: one per spatial axis.
        dilation: one per spatial axis.
        padding: ``"same"``, ``"valid"``, ``"circular"`` (periodic padding as
            in `keras_capacity.CircularConv2D`) or ``"causal"``
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


def ungrouped(kernel, geometry):
    """``(kernel, geometry)`` of the plain convolution a grouped one equals.

    Group ``g``'s ``(*k, in / groups, out / groups)`` block of the grouped
    kernel ``(*k, in / groups, out)`` is placed at input channels
    ``[g i_g, (g + 1) i_g)`` and output channels ``[g o_g, (g + 1) o_g)`` of
    a ``(*k, in, out)`` kernel with zeros elsewhere, which computes the
    same map: block diagonal over the groups, so its singular values are
    the groups' and its nearest kernels in a spectral ball are block
    diagonal too (`grouped` takes the blocks back). The zeros add
    nothing to a (2,1) norm. A kernel with one group is returned as it is.
    """
    groups = geometry.groups
    if groups == 1:
        return kernel, geometry
    *size, per_group, channels_out = kernel.shape
    blocks = ops.reshape(kernel, (*size, per_group, groups, channels_out // groups))
    identity = ops.eye(groups, dtype=kernel.dtype)
    dense = ops.einsum("...igo,hg->...higo", blocks, identity)
    return (
        ops.reshape(dense, (*size, groups * per_group, channels_out)),
        dataclasses.replace(geometry, groups=1),
    )


def grouped(kernel, geometry):
    """The grouped kernel ``(*k, in / groups, out)`` of ``geometry`` from a
    plain ``(*k, in, out)`` one: its diagonal blocks (the inverse of
    `ungrouped` on block-diagonal kernels)."""
    groups = geometry.groups
    if groups == 1:
        return kernel
    *size, channels_in, channels_out = kernel.shape
    blocks = ops.reshape(
        kernel, (*size, groups, channels_in // groups, groups, channels_out // groups)
    )
    diagonal = ops.einsum("...higo,hg->...igo", blocks, ops.eye(groups, dtype=kernel.dtype))
    return ops.reshape(diagonal, (*size, channels_in // groups, channels_out))


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


def _group_rows(x, groups):
    """``(b, ..., channels)`` -> ``(groups, b, n)``: each group's channels of
    every row, flattened (one group: the rows themselves). A grouped
    operator is block diagonal over these slices, of its inputs as of its
    outputs."""
    if groups == 1:
        return _flat(x)[None]
    rows, channels = x.shape[0], x.shape[-1]
    x = ops.reshape(x, (rows, -1, groups, channels // groups))
    return ops.reshape(ops.transpose(x, (2, 0, 1, 3)), (groups, rows, -1))


def _ungroup_rows(flat, shape, groups):
    """The inverse of `_group_rows`, back to ``shape``."""
    if groups == 1:
        return ops.reshape(flat[0], shape)
    rows, channels = shape[0], shape[-1]
    x = ops.reshape(flat, (groups, rows, -1, channels // groups))
    return ops.reshape(ops.transpose(x, (1, 2, 0, 3)), shape)


# SVQB drops the directions of a block whose share of its (unit-diagonal)
# Gram matrix is below this: what rounding leaves of dependent rows, which
# whitening would amplify (by at most 1/sqrt(DEPENDENCE) for those kept).
DEPENDENCE = 1e-6


def _whitening(flat):
    """SVQB (Stathopoulos & Wu, SIAM J. Sci. Comput. 2002) on the rows of
    ``flat`` ``(groups, rows, n)``: the ``(groups, rows, rows)`` map that
    makes them orthonormal. The rows' Gram matrix, scaled to a unit
    diagonal, is diagonalized and its eigenvalues whiten the rows; the
    directions whose eigenvalue is below `DEPENDENCE` times the
    largest (rows that are nearly dependent, or zero) become zero rows, so
    the whitened rows ``Q`` have ``||Q||_2 <= 1``. One ``rows x rows``
    eigendecomposition per group, where a Householder QR of the tall
    ``n x rows`` matrix costs several times a convolution of the block."""
    gram = ops.matmul(flat, ops.swapaxes(flat, -1, -2))
    norms = ops.diagonal(gram, axis1=-2, axis2=-1)
    # Zero rows (moves too small to use, see subspace_iteration) are dropped,
    # not scaled up by orders of magnitude that overflow.
    kept = norms > 1e-30
    scale = ops.where(kept, 1.0 / ops.sqrt(ops.where(kept, norms, 1.0)), 0.0)
    values, vectors = backend.eigh(gram * scale[..., :, None] * scale[..., None, :])
    independent = values > DEPENDENCE * ops.max(values, axis=-1, keepdims=True)
    inverse = ops.where(independent, 1.0 / ops.sqrt(ops.where(independent, values, 1.0)), 0.0)
    return (ops.swapaxes(vectors, -1, -2) * inverse[..., :, None]) * scale[..., None, :]


# A step's move P (rows of X are unit vectors) shorter than this is dropped
# from the next step's basis: its image, a difference of images, would be
# float32 rounding amplified (1e-3 keeps it below 1e-4 of sigma).
SMALLEST_MOVE = 1e-3


def subspace_iteration(kernel, block, geometry, min_steps=1, max_steps=50, rtol=1e-5):
    """Estimates ``||A||_2`` by a block eigensolver on ``A^T A``, warm-started.

    ``block`` holds ``b`` start vectors (rows) ``X``. A step of subspace
    iteration maps them through ``A^T A``, orthonormalizes them (SVQB,
    `_whitening`) and rotates them onto their Ritz vectors
    (Rayleigh-Ritz on the ``b x b`` Gram matrix of their images). The
    largest Ritz value ``sigma^2`` is a lower bound on ``||A||_2^2`` (the
    orthonormalized rows have norm at most one) that converges at the rate
    ``(sigma_{b+1} / sigma_1)^2`` per step. Tracking the top ``b`` singular
    directions, not one, means that when training lets another direction
    overtake the top one, the estimate follows at once instead of after
    many power steps. Iteration stops once the sum of the largest ``b - 1``
    Ritz values changes by less than ``rtol`` (relative) from ``X``'s own to
    the step's, after at least ``min_steps`` and at most ``max_steps``
    steps: watching them, not only the largest, keeps iterating while a
    direction that is about to overtake the top one is still converging;
    the weakest is left out, because a caller may put a random probe there
    (`keras_capacity.lipschitz_estimators.TrackedSubspace`), and
    watching it would cost several steps in every call for nothing. A warm
    call takes one step: ``A`` twice and ``A^T`` once on ``b`` vectors.

    A grouped convolution (a depthwise one: one group per input channel) is
    block diagonal, so every group is iterated on its own: each row's slice
    of a group's channels is that group's vector (`_group_rows`),
    orthonormalized and rotated within the group, and one application of
    ``A`` to the ``b`` rows steps all groups at once. The estimate is the
    largest over the groups, so no group can overtake the tracked ones
    unseen. A group with few channels has clustered top singular values (a
    one-channel 3x3 convolution's spectrum is its smooth symbol, sampled at
    every frequency), which subspace iteration follows too slowly after a
    large optimizer step: there, the steps after the first are LOBPCG's
    (Knyazev, SIAM J. Sci. Comput. 2001; no preconditioner), Rayleigh-Ritz
    on the span of ``[X, A^T A X, P]``, ``P`` the previous step's move,
    which converge in tens of steps where subspace iteration needs hundreds,
    for one more application of ``A`` per step (images are computed, never
    combined over steps: combinations drift in float32); and the stopping
    rule watches each group's largest Ritz value, relative to the largest
    group's (a group's next values cluster with it and settle slowly).

    Args:
        kernel: the layer's kernel.
        block: ``(b, *geometry.input_shape(kernel.shape)[1:])`` start vectors.
        geometry: an `OperatorGeometry`.
        min_steps: the fewest steps to take (at least one is taken).
        max_steps: the most steps to take.
        rtol: the relative change of the watched Ritz values that ends it.

    Returns:
        ``(sigma, block)``: the estimate and the orthonormal Ritz vectors,
        largest first (per group), to start the next call from.
    """
    rows = int(block.shape[0])
    # A group's own top values cluster (a one-channel convolution's
    # spectrum is its smooth symbol, sampled), so for grouped operators each
    # group's largest value is watched, which the estimate is made of.
    watched = max(rows - 1, 1) if geometry.groups == 1 else 1
    groups = geometry.groups
    shape = tuple(block.shape)
    block = ops.cast(block, kernel.dtype)
    image_shape = tuple(apply_operator(kernel, block[:1], geometry).shape[1:])

    def image(flat):
        x = _ungroup_rows(flat, shape, groups)
        return _group_rows(apply_operator(kernel, x, geometry), groups)

    def adjoint(flat_image):
        y = _ungroup_rows(flat_image, (rows, *image_shape), groups)
        return _group_rows(apply_adjoint(kernel, y, geometry), groups)

    def rayleigh_ritz(basis, images):
        """The top ``rows`` Ritz values, vectors and their images on the span
        of ``basis`` (with its ``images``), orthonormalized twice (the
        images once, by the two whitenings combined)."""
        first = _whitening(basis)
        basis = ops.matmul(first, basis)
        second = _whitening(basis)
        basis, images = ops.matmul(second, basis), ops.matmul(ops.matmul(second, first), images)
        values, vectors = backend.eigh(ops.matmul(images, ops.swapaxes(images, -1, -2)))
        top = ops.swapaxes(ops.flip(vectors, axis=-1)[..., :rows], -1, -2)
        values = ops.flip(values, axis=-1)[..., :rows]
        return values, ops.matmul(top, basis), ops.matmul(top, images)

    def watched_sums(ax):
        """The watched sum of X's own Ritz values (X orthonormal)."""
        values = ops.flip(backend.eigvalsh(ops.matmul(ax, ops.swapaxes(ax, -1, -2))), axis=-1)
        return ops.sum(values[:, :watched], axis=1)

    def subspace_step(x, ax):
        """Rayleigh-Ritz on ``A^T A X`` alone; the images are a rotation of
        computed ones, so nothing drifts."""
        w = adjoint(ax)
        values, new_x, new_ax = rayleigh_ritz(w, image(w))
        return watched_sums(ax), values, new_x, new_ax

    def move(new_x, x):
        """``(P, overlap)``: the move from ``x`` to ``new_x`` outside ``x``,
        ``P = new_x - overlap x``; zero where it is much shorter than the
        unit rows, as its image, a difference of images, would be mostly
        rounding."""
        overlap = ops.matmul(new_x, ops.swapaxes(x, -1, -2))
        p = new_x - ops.matmul(overlap, x)
        large = ops.sqrt(ops.sum(ops.square(p), axis=-1, keepdims=True)) > SMALLEST_MOVE
        return ops.where(large, p, 0.0), overlap

    def lobpcg_step(x, p, overlap, previous_ax):
        # Images are computed, never carried as combinations of combinations
        # (which drift from the true ones in float32 over many steps, and
        # inflate the estimate): A P = A X - overlap A X_previous.
        ax = image(x)
        ap = ax - ops.matmul(overlap, previous_ax)
        w = adjoint(ax)
        values, new_x, _ = rayleigh_ritz(
            ops.concatenate([x, w, p], axis=1), ops.concatenate([ax, image(w), ap], axis=1)
        )
        return watched_sums(ax), values, new_x, *move(new_x, x), ax

    def not_converged(i, before, values, *_):
        totals = ops.sum(values[:, :watched], axis=1)
        changing = ops.max(ops.abs(totals - before)) > rtol * ops.max(totals)
        return ops.logical_and(i < max_steps, ops.logical_or(i < min_steps, changing))

    # The first step is one of subspace iteration: where the directions are
    # already tracked (a warm call) it is the only one.
    x = _group_rows(block, groups)
    for _ in range(2):
        x = ops.matmul(_whitening(x), x)
    ax = image(x)
    before, values, new_x, new_ax = subspace_step(x, ax)
    if groups == 1:

        def body(i, before, values, x, ax):
            return i + 1, *subspace_step(x, ax)

        start = (ops.convert_to_tensor(1), before, values, new_x, new_ax)
    else:

        def body(i, before, values, x, p, overlap, previous_ax):
            return i + 1, *lobpcg_step(x, p, overlap, previous_ax)

        start = (ops.convert_to_tensor(1), before, values, new_x, *move(new_x, x), ax)
    _, _, values, x, *_ = ops.while_loop(not_converged, body, start)
    sigma = ops.sqrt(ops.maximum(ops.max(values[:, 0]), 0.0))
    return sigma, _ungroup_rows(x, shape, groups)
