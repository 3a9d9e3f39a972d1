"""The per-block screen of mode="orthogonal" (keras_capacity.screen): its
bounds against every block's float64 SVD, its projections against a numpy
one-round projection written here, over consecutive projections with small
and large moves, in training (compiled, XLA, MirroredStrategy), and files
saved before the screen kept state; for output-side convolutions and for
stride-1 input-side ones, screened through their adjoint (odd and even
kernels, dilated, filling their grid)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_capacity as kc
from keras_capacity import (
    certificates,
    constraints,
    fourier,
    lipschitz_estimators,
    operators,
    orthogonal,
    screen,
)
from tests.conftest import operator_matrix
from tests.test_orthogonal import numpy_clip, numpy_l21_ball

LIP_TOL = constraints.LIPSCHITZ_TOLERANCE

CASES = [  # size, kernel, channels in, out, strides
    ((8, 8), 3, 4, 3, (1, 1)),
    ((7, 9), 3, 4, 4, (1, 1)),
    ((8, 8), 3, 6, 4, (2, 2)),
    ((8, 6), 3, 2, 5, (2, 3)),
    ((4, 4), 3, 8, 8, (1, 1)),
    ((2, 2), 2, 4, 4, (1, 1)),  # the taps fill the grid
]


# Stride 1 with the Gram matrices on the input side (out > in), screened
# through the adjoint: size, kernel, channels in, out, dilation.
ADJOINT_CASES = [
    ((8, 8), 3, 3, 5, (1, 1)),
    ((7, 9), 2, 2, 5, (1, 1)),  # even kernel: the adjoint is translated
    ((9, 8), 3, 2, 4, (2, 2)),
    ((6, 8), 4, 2, 5, (1, 2)),  # even, dilated along one axis
    ((3, 3), 3, 2, 4, (1, 1)),  # the taps fill the grid
    ((2, 2), 2, 1, 3, (1, 1)),  # even, filling a 2x2 grid
]


def tap_offsets(taps, dilation, size):
    """Where the periodic padding puts the taps: ``d a - (d (k - 1)) // 2``."""
    return (np.arange(taps) * dilation - (dilation * (taps - 1)) // 2) % size


def dilated_embed(kernel, size, dilation):
    """Numpy: the kernel's taps on the grid, with the dilation."""
    rows, cols = (tap_offsets(kernel.shape[i], dilation[i], size[i]) for i in range(2))
    grid = np.zeros((*size, *kernel.shape[2:]))
    for a, row in enumerate(rows):
        for b, col in enumerate(cols):
            grid[row, col] += kernel[a, b]
    return grid


def dilated_restrict(grid, kernel_shape, dilation):
    rows, cols = (tap_offsets(kernel_shape[i], dilation[i], grid.shape[i]) for i in range(2))
    return grid[np.ix_(rows, cols)]


def numpy_blocks(kernel, size, strides, dilation=(1, 1)):
    """Every block ``X(g)`` of the circular convolution, ``(H/s_h, W/s_w,
    in S, out)``: the aliases of each output frequency stacked, over
    ``sqrt(S)``; float64, from a full complex FFT."""
    (s_h, s_w), (height, width) = strides, size
    spectrum = np.fft.fft2(dilated_embed(kernel, size, dilation), axes=(0, 1))
    spectrum = spectrum.reshape(s_h, height // s_h, s_w, width // s_w, *kernel.shape[2:])
    blocks = spectrum.transpose(1, 3, 0, 2, 4, 5)
    return blocks.reshape(height // s_h, width // s_w, -1, kernel.shape[3]) / np.sqrt(s_h * s_w)


def numpy_norm(kernel, size, strides, dilation=(1, 1)):
    blocks = numpy_blocks(kernel, size, strides, dilation)
    return np.linalg.norm(blocks, 2, axis=(-2, -1)).max()


def numpy_projection(kernel, k0, lip, dist, size, strides, dilation=(1, 1)):
    """One round: the distance ball, every block's singular values clipped
    at ``lip`` on the grid, the taps kept, the rescale to ``lip`` by the
    exact norm, the segment toward ``K0``."""
    (s_h, s_w), (height, width) = strides, size
    x = k0 + numpy_l21_ball(kernel - k0, dist)
    clipped = numpy_clip(numpy_blocks(x, size, strides, dilation), lip) * np.sqrt(s_h * s_w)
    spectrum = clipped.reshape(height // s_h, width // s_w, s_h, s_w, *x.shape[2:])
    spectrum = spectrum.transpose(2, 0, 3, 1, 4, 5).reshape(height, width, *x.shape[2:])
    grid = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    result = dilated_restrict(grid, x.shape, dilation)
    result *= min(1.0, lip / numpy_norm(result, size, strides, dilation))
    delta = result - k0
    return k0 + delta * min(1.0, dist / np.linalg.norm(delta, axis=-2).sum())


def block_order(size, strides):
    """The output frequencies (flat, row-major) of the screen's blocks: one
    of each conjugate pair ``g, -g`` (the smaller flat index), those that
    are their own conjugates first."""
    out_h, out_w = size[0] // strides[0], size[1] // strides[1]
    rows, cols = np.divmod(np.arange(out_h * out_w), out_w)
    conjugate = (-rows % out_h) * out_w + (-cols % out_w)
    flat = np.arange(out_h * out_w)
    kept = flat[flat <= conjugate]
    own = kept == conjugate[kept]
    return np.concatenate([kept[own], kept[~own]])


def block_norms(kernel, size, strides, dilation=(1, 1)):
    """Every screened block's largest singular value, in the screen's order
    (an adjoint screen's blocks have the same frequencies)."""
    blocks = numpy_blocks(kernel, size, strides, dilation)
    norms = np.linalg.norm(blocks, 2, axis=(-2, -1)).ravel()
    return norms[block_order(size, strides)]


@pytest.mark.parametrize("size,k,channels_in,channels_out,strides", CASES)
def test_block_frobenius_norms_are_those_of_the_fft_blocks(
    size, k, channels_in, channels_out, strides
):
    geometry = operators.OperatorGeometry("conv2d", size, strides, padding="circular")
    kernel = np.random.default_rng(0).standard_normal((k, k, channels_in, channels_out))
    pairs = fourier.LatticePairs(geometry, kernel.shape)
    ours = pairs.block_frobenius(tf.constant(kernel)).numpy()
    theirs = np.linalg.norm(numpy_blocks(kernel, size, strides), axis=(-2, -1)).ravel()
    np.testing.assert_allclose(ours, theirs[block_order(size, strides)], rtol=1e-10)


# Stride 1 (where both routes of LatticePairs apply): size, kernel, channels
# in, out, dilation.
ROUTE_CASES = [
    ((8, 8), 3, 4, 3, (1, 1)),
    ((7, 9), 3, 3, 4, (1, 1)),  # odd width: no real column but the first
    ((2, 2), 2, 5, 4, (1, 1)),  # the taps fill the grid: real blocks only
    ((6, 8), 4, 2, 5, (1, 2)),  # even, dilated
]


def numpy_multiply(kernel, size, dilation, transform):
    """Numpy: every frequency's ``in x out`` spectrum ``M(f)`` of the
    kernel on its grid times ``transform[f]`` (``out x out``), back to the
    grid, restricted to the taps."""
    spectrum = np.fft.fft2(dilated_embed(kernel, size, dilation), axes=(0, 1))
    product = np.einsum("hwio,hwop->hwip", spectrum, transform)
    grid = np.fft.ifft2(product, axes=(0, 1))
    assert np.abs(grid.imag).max() < 1e-9
    return dilated_restrict(grid.real, kernel.shape, dilation)


@pytest.mark.parametrize("route", ["pairs", "spectra"])
@pytest.mark.parametrize("size,k,channels_in,channels_out,dilation", ROUTE_CASES)
def test_both_routes_give_the_fft_grams_and_products(
    size, k, channels_in, channels_out, dilation, route
):
    """``LatticePairs``'s Gram matrices and products by either route, all
    blocks and a few in a given order, against numpy's FFT of the kernel on
    its grid: ``X(g)^H X(g)`` per frequency, and ``M(f) T(f)`` for a random
    Hermitian-symmetric ``T`` (zero off the rows given)."""
    geometry = operators.OperatorGeometry("conv2d", size, (1, 1), dilation, padding="circular")
    rng = np.random.default_rng(2)
    kernel = rng.standard_normal((k, k, channels_in, channels_out))
    pairs = fourier.LatticePairs(geometry, kernel.shape)
    grams = pairs.grams_from_pairs if route == "pairs" else pairs.grams_from_spectra
    multiply = pairs.multiply_by_pairs if route == "pairs" else pairs.multiply_by_spectra
    blocks = numpy_blocks(kernel, size, (1, 1), dilation).reshape(-1, channels_in, channels_out)
    theirs = np.einsum("fio,fip->fop", blocks.conj(), blocks)
    order = block_order(size, (1, 1))
    real_count, complex_count = pairs.counts
    # T: a random matrix at every frequency, made Hermitian-symmetric on the
    # grid (T(-f) the conjugate of T(f)), so that the product stays real.
    flat_rows, flat_cols = np.divmod(np.arange(size[0] * size[1]), size[1])
    conjugate = (-flat_rows % size[0]) * size[1] + (-flat_cols % size[1])
    transform = rng.standard_normal((len(conjugate), channels_out, channels_out)) + 1j * (
        rng.standard_normal((len(conjugate), channels_out, channels_out))
    )
    transform = (transform + transform[conjugate].conj()) / 2
    for rows in (None, (np.arange(real_count)[::-1][:2], np.arange(complex_count)[::-1][:3])):
        index = None if rows is None else tuple(tf.constant(r, "int32") for r in rows)
        real, other = grams(tf.constant(kernel), index)
        picked = (
            order if rows is None else np.concatenate([order[rows[0]], order[rows[1] + real_count]])
        )
        ours = np.concatenate([real.numpy(), other.numpy()]) if other is not None else real.numpy()
        # The block at g is numpy's at -g: its spectrum is e^{+i phi}.
        np.testing.assert_allclose(ours, theirs[conjugate[picked]], atol=1e-10)
        # T zero away from the rows (and their conjugates), as `multiply` reads it.
        kept = np.zeros(len(conjugate), bool)
        kept[picked] = kept[conjugate[picked]] = True
        given = transform[conjugate[picked]]
        t_real = given[: len(picked) - (0 if other is None else len(other.numpy()))].real
        t_other = given[len(t_real) :] if other is not None else None
        ours = multiply(
            tf.constant(kernel),
            tf.constant(t_real) if len(t_real) else None,
            None if t_other is None else tf.constant(t_other),
            index=index,
        ).numpy()
        expected = numpy_multiply(
            kernel,
            size,
            dilation,
            np.where(kept[:, None, None], transform, 0).reshape(*size, channels_out, channels_out),
        )
        np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_the_cheaper_route_is_taken():
    """The spectra where the taps nearly fill the grid (the ResNet's deep
    layers) or few blocks are asked for; the pairs for all blocks of a large
    grid, and at any stride but 1 (the spectra's route needs stride 1)."""

    def pairs_for(size, k, channels, strides=(1, 1)):
        geometry = operators.OperatorGeometry("conv2d", size, strides, padding="circular")
        return fourier.LatticePairs(geometry, (k, k, channels, channels))

    assert pairs_for((4, 4), 3, 128).uses_spectra()
    assert pairs_for((2, 2), 2, 256).uses_spectra()
    assert not pairs_for((32, 32), 3, 64).uses_spectra()
    few = (tf.constant([0], "int32"), tf.constant([3, 7], "int32"))
    assert pairs_for((32, 32), 3, 64).uses_spectra(few)
    assert not pairs_for((8, 8), 3, 64, (2, 2)).uses_spectra(few)


@pytest.mark.parametrize("size,k,channels_in,channels_out,strides", CASES)
def test_consecutive_projections_match_numpy_and_the_bounds_hold(
    size, k, channels_in, channels_out, strides
):
    """Twelve projections in a row, the kernel moved between them by steps
    from none to larger than the kernel: every result equals numpy's
    projection, and every bound the screen keeps is at least its block's
    largest singular value; some projections decompose none or only some
    of the blocks (the screen saves work), others all of them."""
    check_consecutive_projections(size, k, channels_in, channels_out, strides, (1, 1))


@pytest.mark.parametrize("size,k,channels_in,channels_out,dilation", ADJOINT_CASES)
def test_input_side_projections_through_the_adjoint_match_numpy(
    size, k, channels_in, channels_out, dilation
):
    """The same at stride 1 with the Gram matrices on the input side (odd
    and even kernels, dilated, filling their grid), screened through the
    adjoint kernel: numpy's projection of the layer's own kernel, and
    bounds on the layer's own blocks."""
    geometry = operators.OperatorGeometry("conv2d", size, (1, 1), dilation, padding="circular")
    assert fourier.plan(geometry, (k, k, channels_in, channels_out))[0] == "input"
    check_consecutive_projections(size, k, channels_in, channels_out, (1, 1), dilation)


def check_consecutive_projections(size, k, channels_in, channels_out, strides, dilation):
    geometry = operators.OperatorGeometry("conv2d", size, strides, dilation, padding="circular")
    shape = (k, k, channels_in, channels_out)
    screen_ = screen.choose(geometry, shape)
    assert screen_ is not None
    adjoint = fourier.plan(geometry, shape)[0] == "input"
    assert isinstance(screen_, screen.AdjointScreen) == adjoint
    assert screen_.state_shapes()["screened_kernel"] == shape
    rng = np.random.default_rng(1)
    k0 = 0.3 * rng.standard_normal(shape)
    lip = 0.8 * numpy_norm(k0, size, strides, dilation)
    dist = 0.5 * np.linalg.norm(k0, axis=-2).sum()
    state = screen_.start(k0)
    kernel, decomposed = k0, []
    for step, scale in enumerate([0.0, 1e-4, 1e-3, 0.01, 0.03, 0.1, 0.0, 1.0, 1e-3, 0.3, 3.0, 0.0]):
        kernel = kernel + scale * np.abs(kernel).mean() * rng.standard_normal(shape)
        bounds_before = screen_.carried(state, tf.constant(kernel)).numpy()
        decomposed.append(np.mean(bounds_before > lip))
        ours, state = orthogonal.project_screened(
            tf.constant(kernel), tf.constant(k0), lip, dist, screen_, state
        )
        ours = ours.numpy()
        theirs = numpy_projection(kernel, k0, lip, dist, size, strides, dilation)
        np.testing.assert_allclose(ours, theirs, atol=1e-9, err_msg=step)
        assert np.all(state[1].numpy() >= block_norms(ours, size, strides, dilation) - 1e-12)
        np.testing.assert_array_equal(state[0].numpy(), ours)
        kernel = ours
    assert decomposed[0] == 1.0 and min(decomposed) < 1.0
    # Taps that fill their grid leave the clipped blocks at ``lip``, above it
    # by the inflation: a 3x3 grid's five blocks are then mostly above.
    if len(screen_.capacities) > 1 and not screen_.covers_grid:
        assert any(0.0 < share <= 0.5 for share in decomposed)


@pytest.mark.parametrize(
    "mode,size,k",
    [
        ("orthogonal", (1, 1), 1),
        ("orthogonal", (2, 2), 2),
        ("orthogonal", (3, 3), 3),  # complex blocks too
        ("radial", (1, 1), 1),
        ("radial", (2, 2), 2),
    ],
)
def test_large_blocks_certified_inside_are_not_decomposed(mode, size, k):
    """The paper's ResNet's deepest layers (256 and 512 channels on 2x2 and
    1x1 grids; the radial exact norm certifies from 512 channels): after a
    projection, a kernel shrunk by 1e-3 is certified inside the ball
    (`keras_capacity.certificates`): it is returned as it is, and its
    blocks' bounds are ``lip``, not their exact norms (which a
    decomposition would have kept); one grown to 1e-3 above ``lip`` is not,
    and is clipped (orthogonal) or rescaled (radial) exactly. Every result
    against numpy, every bound against the blocks' SVD."""
    channels = certificates.MIN_SIZE if mode == "orthogonal" else certificates.MIN_SIZE_EIGENVALUES
    geometry = operators.OperatorGeometry("conv2d", size, (1, 1), padding="circular")
    shape = (k, k, channels, channels)
    screen_ = screen.choose(geometry, shape)
    assert screen_.certifies_clipping if mode == "orthogonal" else screen_.certifies_norm
    rng = np.random.default_rng(4)
    k0 = 0.05 * rng.standard_normal(shape)
    lip = 0.8 * numpy_norm(k0, size, (1, 1))
    dist = np.inf
    state = screen_.start(k0)
    estimator = lipschitz_estimators.ExactFourier(geometry, shape, lip)
    at_lip = lip * (1 + screen.INFLATION)
    kernel = k0
    for step, factor in enumerate([1.0, 1 - 1e-3, (1 + 1e-3) / (1 - 1e-3), 1 - 1e-3]):
        kernel = kernel * factor
        if mode == "orthogonal":
            ours, state = orthogonal.project_screened(
                tf.constant(kernel), tf.constant(k0), lip, dist, screen_, state
            )
            theirs = numpy_projection(kernel, k0, lip, dist, size, (1, 1))
        else:
            norm, state = estimator.in_graph(tf.constant(kernel), state, step)
            ours = state[0]
            theirs = kernel * min(1.0, lip / numpy_norm(kernel, size, (1, 1)))
        ours, bounds = ours.numpy(), state[1].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-9, err_msg=step)
        assert np.all(bounds >= block_norms(ours, size, (1, 1)) - 1e-12)
        if factor < 1:  # certified: bounds at lip, not the exact norms below it
            np.testing.assert_array_equal(ours, kernel)
            assert np.all(bounds == at_lip)
            assert np.all(block_norms(ours, size, (1, 1)) < lip * (1 - 5e-4))
        kernel = ours


class BoundsChecker(keras.callbacks.Callback):
    """After every step: the layer's norm from its dense operator, and the
    screen's bounds against every block's SVD."""

    def __init__(self, layer, input_shape):
        super().__init__()
        self.layer, self.input_shape, self.shares = layer, input_shape, []

    def on_train_batch_end(self, batch, logs=None):
        constraint = self.layer.kernel_constraint
        lip = constraint.lip
        norm = np.linalg.norm(operator_matrix(self.layer, self.input_shape), 2)
        assert norm <= lip * (1 + LIP_TOL)
        kernel, bounds = (np.asarray(v.numpy(), np.float64) for v in constraint.projection_state)
        if constraint.mode == "orthogonal":  # the radial state keeps the kernel it rescaled
            np.testing.assert_array_equal(kernel, self.layer.kernel.numpy())
        size, geometry = self.input_shape[:2], constraint.geometry
        assert np.all(bounds >= block_norms(kernel, size, geometry.strides, geometry.dilation))


@pytest.mark.parametrize("mode", ["orthogonal", "radial"])
@pytest.mark.parametrize("setting", ["compiled", "xla", "mirrored"])
def test_every_training_step_holds_its_bound(setting, mode, two_cpu_strategy):
    """SGD steps large enough to move the top directions at every step
    (MSE to targets of scale 10): the kernel after each step is within its
    bound on the dense operator, and the kept bounds stay upper bounds."""
    scope = two_cpu_strategy.scope() if setting == "mirrored" else tf.device("/cpu:0")
    with scope:
        conv = kc.CircularConv2D(
            4, 3, use_bias=False, kernel_constraint=kc.LipDist(0.7, 3.0, mode=mode)
        )
        model = keras.Sequential([keras.Input((8, 8, 6)), conv, keras.layers.Flatten()])
        kc.bind(model)
        model.compile(keras.optimizers.SGD(0.05), "mse", jit_compile=setting == "xla")
    assert conv.kernel_constraint._block_screen is not None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 6)).astype(np.float32)
    y = 10 * rng.standard_normal((64, 8 * 8 * 4)).astype(np.float32)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[BoundsChecker(conv, (8, 8, 6))])


@pytest.mark.parametrize(
    "mode,k,dilation", [("orthogonal", 2, 1), ("orthogonal", 3, 2), ("radial", 3, 1)]
)
def test_input_side_training_steps_hold_their_bound(mode, k, dilation):
    """The same SGD steps on a 3->6 convolution, screened through its
    adjoint (an even kernel, a dilated one): within the bound on the dense
    operator after every step, and the kept bounds bound the layer's own
    blocks."""
    with tf.device("/cpu:0"):
        conv = kc.CircularConv2D(
            6,
            k,
            dilation_rate=dilation,
            use_bias=False,
            kernel_constraint=kc.LipDist(0.7, 3.0, mode=mode),
        )
        model = keras.Sequential([keras.Input((8, 8, 3)), conv, keras.layers.Flatten()])
        kc.bind(model)
        model.compile(keras.optimizers.SGD(0.05), "mse")
    assert isinstance(conv.kernel_constraint._block_screen, screen.AdjointScreen)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8, 8, 3)).astype(np.float32)
    y = 10 * rng.standard_normal((64, 8 * 8 * 6)).astype(np.float32)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[BoundsChecker(conv, (8, 8, 3))])


@pytest.mark.parametrize("size,k,channels_in,channels_out,strides", CASES)
def test_the_radial_estimate_is_exact_above_the_bound(size, k, channels_in, channels_out, strides):
    """The screened in-graph estimate of Lip over consecutive kernels: the
    exact norm (numpy's) wherever that exceeds ``lip``, and at most ``lip``
    where the norm is below it; its state bounds the rescaled kernel."""
    check_radial_estimate(size, k, channels_in, channels_out, strides, (1, 1))


@pytest.mark.parametrize("size,k,channels_in,channels_out,dilation", ADJOINT_CASES)
def test_the_radial_estimate_through_the_adjoint_is_exact_above_the_bound(
    size, k, channels_in, channels_out, dilation
):
    check_radial_estimate(size, k, channels_in, channels_out, (1, 1), dilation)


def check_radial_estimate(size, k, channels_in, channels_out, strides, dilation):
    geometry = operators.OperatorGeometry("conv2d", size, strides, dilation, padding="circular")
    shape = (k, k, channels_in, channels_out)
    rng = np.random.default_rng(2)
    kernel = 0.3 * rng.standard_normal(shape)
    lip = 0.9 * numpy_norm(kernel, size, strides, dilation)
    estimator = lipschitz_estimators.choose(geometry, shape, lip)
    assert estimator.screen is not None
    state = estimator.screen.start(kernel)
    above = below = 0
    for scale in [0.0, 0.01, 0.1, 0.0, 1.0, 0.001, 0.3]:
        kernel = kernel + scale * np.abs(kernel).mean() * rng.standard_normal(shape)
        sigma, state = estimator.in_graph(tf.constant(kernel), state, 0)
        truth = numpy_norm(kernel, size, strides, dilation)
        if truth > lip:
            np.testing.assert_allclose(float(sigma), truth, rtol=1e-10)
            above += 1
        else:
            # At most lip, but for rounding where the kernel was rescaled to it.
            assert truth * (1 - 1e-12) <= float(sigma) <= lip * (1 + 1e-12)
            below += 1
        rescaled = kernel * min(1.0, lip / truth)
        np.testing.assert_allclose(state[0].numpy(), rescaled, rtol=1e-10)
        bounds = block_norms(rescaled, size, strides, dilation)
        assert np.all(state[1].numpy() >= bounds - 1e-12)
        kernel = rescaled
    assert above and below


@pytest.mark.parametrize("channels_out,mode", [(2, "orthogonal"), (6, "orthogonal"), (6, "radial")])
def test_a_file_saved_before_the_screen_loads_with_unknown_bounds(channels_out, mode):
    """What Keras's loading hands a LipDist from such a file: its three
    variables other than the screen's; the bounds start unknown, so the next
    projection decomposes every block. Other counts are still refused. Also
    for a 4->6 convolution (screened through its adjoint since, unscreened
    before)."""
    conv = kc.CircularConv2D(channels_out, 3, kernel_constraint=kc.LipDist(0.7, 3.0, mode=mode))
    model = keras.Sequential([keras.Input((8, 8, 4)), conv])
    kc.bind(model)
    constraint = conv.kernel_constraint
    k0 = constraint.initial_kernel.numpy()
    # The variables a LipDist saved before: K0, the step count, bound or not.
    kept = [v for v in constraint.variables if all(v is not s for s in constraint.projection_state)]
    old = {str(i): v.numpy() for i, v in enumerate(kept)}
    fresh = kc.LipDist.from_config(constraint.get_config())
    fresh.load_own_variables(old)
    np.testing.assert_array_equal(fresh.initial_kernel.numpy(), k0)
    assert fresh.is_bound
    assert fresh.steps.numpy() == constraint.steps.numpy()
    assert np.all(np.isinf(fresh.projection_state[1].numpy()))
    with pytest.raises(ValueError, match="expected 5 variables"):
        fresh.load_own_variables({"0": k0})
