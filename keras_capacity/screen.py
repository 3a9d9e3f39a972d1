"""Certified per-block screens, so that a projection decomposes only the
frequency blocks that can exceed the bound.

A circular convolution is block diagonal in the Fourier basis: one block
``X(g)`` per output frequency (its aliases stacked; one of each conjugate
pair, `keras_capacity.fourier.LatticePairs`), and ``Lip(K) =
max_g sigma_max(X(g))``. Projecting onto ``{Lip <= lip}`` changes only the
blocks with ``sigma_max(X(g)) > lip``, and the exact norm is decided by
them alone. Between two kernels ``K`` and ``K'``, Weyl's inequality bounds
every block without decomposing it:

    sigma_max(X_K'(g)) <= sigma_max(X_K(g)) + ||X_K'(g) - X_K(g)||_F,

and the last term is one product of a (blocks x tap pairs) matrix with the
change's tap inner products
(`block_frobenius`). A
`BlockScreen`'s state is a kernel and an upper bound on every block
of it; any later kernel's bounds follow from it (`BlockScreen.carried`),
and only the blocks whose bound exceeds ``lip`` are decomposed, exactly
(``eigh`` of their Gram matrices), which refreshes their bounds. Unknown
bounds (``inf``: a constraint just bound or loaded without them) make the
first projection decompose every block.

Shapes stay static (XLA, JAX): a compiled conditional decomposes none of
the blocks, or `CAPACITIES` of each kind (real and complex Gram
matrices: the smallest share that holds every block above ``lip``), or
all of them. Every bound kept, carried or decomposed, is inflated by
`INFLATION` relative, above the float32 rounding of the products and
eigenvalues it comes from (about ``1e-7`` in the tests), so bounds stay
upper bounds over any number of projections; a block whose bound creeps
up to ``lip`` is decomposed and its bound made exact again.

Blocks of `keras_capacity.certificates.MIN_SIZE` channels or more (for the
exact norm alone, `keras_capacity.certificates.MIN_SIZE_EIGENVALUES`) that
the bounds do not certify are tested first (`keras_capacity.certificates`): if
every one of them is certified inside the ball, none is decomposed and
their bounds become ``lip`` (inflated); otherwise they are decomposed as
above. The paper's ResNet's deepest blocks are mostly in that case: back
below the bound by their next projection, but moved by more than the gap
below their largest singular value, which Weyl's inequality cannot see.

A stride-1 convolution whose Gram matrices are on the input side (``out >
in``: the paper's first convolution, 3->64, and each stage's first, 64->128
and on) is screened through its adjoint (`AdjointScreen`). For the Keras
kernel ``K`` (taps ``K_a``, ``in x out``, at grid offsets ``o_a =
d a - p``, `keras_capacity.fourier.tap_positions`), ``(A x)(i) = sum_a
K_a^T x(i + o_a)``, so ``(A^T y)(j) = sum_a K_a y(j - o_a)``. The kernel
``K*`` flipped in both spatial axes with its channel axes swapped (``K*_a =
K_{k-1-a}^T``, ``out x in``) puts ``K_{k-1-a}`` at ``d a - p = c - o_{k-1-a}``
with ``c = d (k - 1) - 2 p`` (0 for an odd span ``d (k - 1) + 1``, 1 for an
even one), so its convolution on the same grid (same dilation, stride 1) is
``A^T`` followed by a circular translation by ``c``: a unitary factor. Its
block at frequency ``g`` is ``X(g)^H`` times a unit phase: the same
singular values at the same frequency, so the two share bounds, block for
block. Clipping
commutes with the unitary factor and with the adjoint, and the taps of
``K*`` are those of ``K`` (grid cell ``x`` to ``c - x``), so clipping
``K*`` on its grid and restricting it to its taps is the adjoint of the same
for ``K``; ``Lip(K*) = Lip(K)``; the distance is not the screen's. And the
adjoint's Gram matrices are on its output side (``in <= out``), where
`BlockScreen` works.

Measured on the paper's networks (``benchmarks/active_blocks.py``): after
the first projection about 2% of the blocks need a decomposition.
"""

import math

import numpy as np
from keras import ops

from keras_capacity import backend, certificates, fourier, projections

# The blocks of each kind the smaller branches decompose, as fractions.
CAPACITIES = (1 / 32, 1 / 4, 1 / 2)
# Relative inflation of every carried bound (float32 rounding is ~1e-6).
INFLATION = 1e-5
UNKNOWN = math.inf


def applies(geometry, kernel_shape):
    """Whether the blocks are screened: an ungrouped circular convolution
    whose strides divide its input and whose Gram matrices are on the
    output side (`keras_capacity.fourier.plan`), the path where the
    projection works on the kernel's taps, or at stride 1 on the input
    side, through the adjoint (`AdjointScreen`)."""
    return (
        fourier.is_circular(geometry)
        and geometry.groups == 1
        and fourier.strides_divide(geometry)
        and (
            fourier.plan(geometry, kernel_shape)[0] == "output" or tuple(geometry.strides) == (1, 1)
        )
    )


def is_adjoint(geometry, kernel_shape):
    """Whether a screened layer is screened through its adjoint: stride 1
    with the Gram matrices on the input side (``out > in``)."""
    return fourier.plan(geometry, kernel_shape)[0] == "input"


def adjoint_kernel(kernel):
    """``K*``: the kernel flipped in both spatial axes, its channel axes
    swapped, ``(kh, kw, out, in)``; the adjoint convolution's, up to a
    circular translation (module docstring). Its own inverse."""
    return ops.transpose(ops.flip(ops.flip(kernel, 0), 1), (0, 1, 3, 2))


def _excess_shrinkage(gram, lip):
    """``(V diag(min(1, lip / s) - 1) V^H, s_max)`` from the Gram matrices
    ``M^H M = V diag(s^2) V^H``: ``M`` plus ``M`` times the first is ``M``
    with its singular values clipped at ``lip``, and it is exactly zero
    for a matrix already inside the ball."""
    values, vectors = backend.eigh(gram)
    singular = ops.sqrt(ops.maximum(values, 0.0))
    factor = ops.minimum(1.0, lip / ops.maximum(singular, 1e-30)) - 1.0
    scaled = vectors * ops.expand_dims(ops.cast(factor, vectors.dtype), -2)
    excess = backend.matmul(scaled, projections.adjoint(vectors))
    return excess, singular[..., -1]


class BlockScreen:
    """Upper bounds on every block of one layer's circular convolution
    (its Gram matrices on the output side), carried from projection to
    projection, and the clipping and exact norm that decompose only the
    blocks above ``lip``."""

    def __init__(self, geometry, kernel_shape):
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.pairs = fourier.LatticePairs(geometry, self.kernel_shape)
        self.counts = self.pairs.counts
        # Per branch, (real, complex) blocks decomposed; the last one all.
        tiers = [
            tuple(min(n, max(1, math.ceil(share * n))) for n in self.counts) for share in CAPACITIES
        ]
        self.capacities = sorted(set(tiers) - {self.counts}) + [self.counts]
        # The taps fill the grid: the clipped kernel is clipped exactly.
        self.covers_grid = fourier.CircularEmbedding(geometry, self.kernel_shape).covers_grid
        # Large blocks are certified before they are decomposed.
        self.certifies_clipping = self.kernel_shape[3] >= certificates.MIN_SIZE
        self.certifies_norm = self.kernel_shape[3] >= certificates.MIN_SIZE_EIGENVALUES

    def state_shapes(self):
        """``{name: shape}`` of the state ``LipDist`` keeps."""
        return {"screened_kernel": self.kernel_shape, "block_bounds": (sum(self.counts),)}

    def start(self, kernel):
        """The state for ``kernel`` with every bound unknown (numpy)."""
        kernel = np.asarray(kernel)
        return kernel, np.full(sum(self.counts), UNKNOWN, kernel.dtype)

    def carried(self, state, kernel):
        """Upper bounds on ``kernel``'s blocks from ``state`` (a kernel and
        bounds on its blocks), by Weyl's inequality."""
        last, bounds = (ops.convert_to_tensor(x, kernel.dtype) for x in state)
        change = self.pairs.block_frobenius(kernel - last)
        return (bounds + change) * (1.0 + INFLATION)

    # -------------------------------------------------------------- selection

    @property
    def _offsets(self):
        """Where each kind's bounds start in the bounds vector."""
        return (0, self.counts[0])

    def _above(self, bounds, lip):
        """How many blocks of each kind have a bound above ``lip``."""
        above = ops.cast(bounds > lip, "int32")
        return ops.sum(above[: self.counts[0]]), ops.sum(above[self.counts[0] :])

    def _rows(self, bounds, capacities):
        """``(real rows, complex rows)`` to decompose: of each kind, the
        ``capacities`` with the largest bounds (which hold every bound above
        ``lip`` where that branch is taken)."""
        rows = []
        for offset, count, capacity in zip(self._offsets, self.counts, capacities, strict=True):
            if count == 0:
                rows.append(None)
            elif capacity == count:
                rows.append(ops.arange(count, dtype="int32"))
            else:
                part = bounds[offset : offset + count]
                rows.append(ops.cast(ops.top_k(part, capacity, sorted=False)[1], "int32"))
        return tuple(rows)

    def _refreshed(self, bounds, rows, values, margin=1.0 + INFLATION):
        """``bounds`` with the exact ``values`` at the decomposed ``rows``,
        times ``margin`` (above their float32 rounding)."""
        flat_rows, flat_values = [], []
        for offset, part_rows, part_values in zip(self._offsets, rows, values, strict=True):
            if part_rows is not None:
                flat_rows.append(part_rows + offset)
                flat_values.append(ops.cast(part_values, bounds.dtype) * margin)
        indices = ops.expand_dims(ops.concatenate(flat_rows, axis=0), -1)
        return ops.scatter_update(bounds, indices, ops.concatenate(flat_values, axis=0))

    def _unless_certified(self, grams, bounds, rows, lip, certified, decompose, certifies):
        """``certified(bounds)`` with ``lip`` as the bound at ``rows`` where
        every block ``grams`` is certified inside the ball
        (`keras_capacity.certificates`, where ``certifies``: large blocks);
        else ``decompose()``."""
        if not certifies:
            return decompose()
        inside = ops.all(
            ops.stack([ops.all(certificates.inside_ball(g, lip)) for g in grams if g is not None])
        )
        at_lip = [None if r is None else ops.ones((r.shape[0],), bounds.dtype) * lip for r in rows]
        return ops.cond(inside, lambda: certified(self._refreshed(bounds, rows, at_lip)), decompose)

    def _screened(self, bounds, lip, decompose, skip):
        """``skip()`` where no bound exceeds ``lip``; else
        ``decompose(capacities)`` with the first capacities that hold each
        kind's count of bounds above ``lip``."""
        above_real, above_complex = self._above(bounds, lip)

        def branch(tier):
            capacities = self.capacities[tier]
            if tier == len(self.capacities) - 1:
                return decompose(capacities)
            fits = ops.logical_and(above_real <= capacities[0], above_complex <= capacities[1])
            return ops.cond(fits, lambda: decompose(capacities), lambda: branch(tier + 1))

        return ops.cond(above_real + above_complex == 0, skip, lambda: branch(0))

    # ------------------------------------------------------------- operations

    def clip(self, kernel, bounds, lip):
        """``(kernel', bounds)``: ``kernel'`` has every block's singular
        values clipped at ``lip`` on its input grid, restricted to the
        kernel's taps (as
        `project_kernel`);
        ``bounds`` are ``kernel``'s (the input's), exact at the blocks
        decomposed."""
        lip = ops.convert_to_tensor(lip, kernel.dtype)

        def decompose(capacities):
            rows = self._rows(bounds, capacities)
            grams = self.pairs.grams(kernel, rows)

            def clipped():
                parts = [None if g is None else _excess_shrinkage(g, lip) for g in grams]
                excess = [None if p is None else p[0] for p in parts]
                change = self.pairs.multiply(kernel, *excess, index=rows)
                top = [None if p is None else p[1] for p in parts]
                return kernel + change, self._refreshed(bounds, rows, top)

            return self._unless_certified(
                grams,
                bounds,
                rows,
                lip,
                lambda certified: (kernel, certified),
                clipped,
                self.certifies_clipping,
            )

        return self._screened(bounds, lip, decompose, lambda: (kernel, bounds))

    def norm(self, kernel, bounds, lip):
        """``(norm, bounds)``: an upper bound on ``Lip(kernel)`` that is the
        exact norm where that exceeds ``lip``, and the bounds made exact at
        the blocks decomposed for it."""
        lip = ops.convert_to_tensor(lip, kernel.dtype)

        def decompose(capacities):
            rows = self._rows(bounds, capacities)
            grams = self.pairs.grams(kernel, rows)

            def exact_norm():
                top = [
                    None if g is None else ops.sqrt(ops.maximum(backend.largest_eigenvalue(g), 0.0))
                    for g in grams
                ]
                exact = self._refreshed(bounds, rows, top, margin=1.0)
                return ops.max(exact), self._refreshed(bounds, rows, top)

            # Certified: the norm is at most lip, where nothing is rescaled.
            return self._unless_certified(
                grams,
                bounds,
                rows,
                lip,
                lambda certified: (lip, certified),
                exact_norm,
                self.certifies_norm,
            )

        return self._screened(bounds, lip, decompose, lambda: (ops.max(bounds), bounds))


class AdjointScreen(BlockScreen):
    """The `BlockScreen` of the adjoint kernel ``K*`` (`adjoint_kernel`), for
    a stride-1 convolution whose Gram matrices are on the input side.

    Its state and its arguments are in the layer's own kernel space (what
    ``LipDist`` keeps, and what `keras_capacity.orthogonal.project_screened`
    passes); every kernel is mapped to ``K*`` on the way in and clipped
    kernels back on the way out. The bounds are those of ``K*``'s blocks,
    which have ``K``'s singular values at the same frequencies, so the
    clipping, the norm and the bounds are ``K``'s (module docstring)."""

    def __init__(self, geometry, kernel_shape):
        kh, kw, channels_in, channels_out = (int(d) for d in kernel_shape)
        super().__init__(geometry, (kh, kw, channels_out, channels_in))
        self.kernel_shape = (kh, kw, channels_in, channels_out)

    def carried(self, state, kernel):
        last, bounds = state
        last = ops.convert_to_tensor(last, kernel.dtype)
        return super().carried((adjoint_kernel(last), bounds), adjoint_kernel(kernel))

    def clip(self, kernel, bounds, lip):
        clipped, bounds = super().clip(adjoint_kernel(kernel), bounds, lip)
        return adjoint_kernel(clipped), bounds

    def norm(self, kernel, bounds, lip):
        return super().norm(adjoint_kernel(kernel), bounds, lip)


def choose(geometry, kernel_shape):
    """The layer's screen (`AdjointScreen` at stride 1 on the input side), or
    ``None`` where `applies` does not hold."""
    if not applies(geometry, kernel_shape):
        return None
    if is_adjoint(geometry, kernel_shape):
        return AdjointScreen(geometry, kernel_shape)
    return BlockScreen(geometry, kernel_shape)
