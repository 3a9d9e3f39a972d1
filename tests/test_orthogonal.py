"""mode="orthogonal": against numpy's SVD clipping, a float64 Dykstra run to
convergence, the variational inequality of the projection, and the dense
operator matrix; refused where it does not apply; in the train step."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_capacity as kc
from keras_capacity import constraints, fourier, operators
from tests.conftest import operator_matrix

LIP_TOL, DIST_TOL = constraints.LIPSCHITZ_TOLERANCE, constraints.DISTANCE_TOLERANCE


def bound_layer(layer, input_shape):
    model = keras.Sequential([keras.Input(input_shape), layer])
    kc.bind(model)
    return layer


def numpy_clip(matrices, lip):
    """Clips the singular values of a matrix, or of a batch of them."""
    u, s, vt = np.linalg.svd(matrices, full_matrices=False)
    return (u * np.minimum(s, lip)[..., None, :]) @ vt


def test_dense_lipschitz_only_is_svd_clipping():
    layer = bound_layer(
        keras.layers.Dense(6, kernel_constraint=kc.LipDist(0.5, mode="orthogonal")), (9,)
    )
    kernel = 2 * np.random.randn(9, 6)
    projected = layer.kernel_constraint(kernel.astype(np.float32)).numpy()
    np.testing.assert_allclose(projected, numpy_clip(kernel, 0.5), atol=2e-6)


def l21(delta):
    return np.linalg.norm(delta, axis=-2).sum()


def numpy_l21_ball(delta, radius):
    """Float64 bisection on the group soft-threshold."""
    norms = np.linalg.norm(delta, axis=-2, keepdims=True)
    if norms.sum() <= radius:
        return delta
    low, high = 0.0, norms.max()
    for _ in range(200):
        tau = (low + high) / 2
        low, high = (tau, high) if np.maximum(norms - tau, 0).sum() > radius else (low, tau)
    return delta * np.maximum(norms - high, 0) / np.maximum(norms, 1e-300)


def test_dense_both_constraints_satisfy_the_variational_inequality():
    rng = np.random.default_rng(0)
    lip, dist = 0.8, 1.5
    layer = bound_layer(
        keras.layers.Dense(
            5, kernel_constraint=kc.LipDist(lip, dist, mode="orthogonal", n_iter=400)
        ),
        (7,),
    )
    k0 = layer.kernel_constraint.initial_kernel.numpy().astype(np.float64)
    kernel = k0 + rng.standard_normal(k0.shape)
    p = layer.kernel_constraint(kernel.astype(np.float32)).numpy().astype(np.float64)
    assert np.linalg.norm(p, 2) <= lip * (1 + LIP_TOL)
    assert l21(p - k0) <= dist * (1 + DIST_TOL)
    worst = -np.inf
    for _ in range(300):  # random feasible kernels Q
        q = numpy_clip(k0 + numpy_l21_ball(rng.standard_normal(k0.shape), dist), lip)
        q = k0 + numpy_l21_ball(q - k0, dist * rng.uniform())
        if np.linalg.norm(q, 2) > lip:
            continue
        inner = np.sum((kernel - p) * (q - p))
        worst = max(worst, inner / (np.linalg.norm(kernel - p) * np.linalg.norm(q - p)))
    assert worst <= 1e-2  # <K - P, Q - P> <= eps |K - P| |Q - P|


def embed(kernel, size):
    """Numpy: the kernel's taps at offsets a - (k-1)//2 on the grid."""
    grid = np.zeros((*size, *kernel.shape[2:]))
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            grid[
                (a - (kernel.shape[0] - 1) // 2) % size[0],
                (b - (kernel.shape[1] - 1) // 2) % size[1],
            ] += kernel[a, b]
    return grid


def restrict(grid, kernel_shape):
    kh, kw = kernel_shape[:2]
    rows = (np.arange(kh) - (kh - 1) // 2) % grid.shape[0]
    cols = (np.arange(kw) - (kw - 1) // 2) % grid.shape[1]
    return grid[np.ix_(rows, cols)]


def numpy_dykstra_circular(kernel, lip, rounds):
    """Float64 Dykstra between the spectral ball (full complex FFT, SVD) and
    the kernel's support, written independently of the library."""
    size = (6, 6)
    x = embed(kernel, size)
    support = embed(np.ones_like(kernel), size) != 0
    increments = [np.zeros_like(x), np.zeros_like(x)]

    def spectral(g):
        spectrum = np.fft.fft2(g, axes=(0, 1))
        return np.real(np.fft.ifft2(numpy_clip(spectrum, lip), axes=(0, 1)))

    for _ in range(rounds):
        for i, project in enumerate((spectral, lambda g: g * support)):
            shifted = x + increments[i]
            x = project(shifted)
            increments[i] = shifted - x
    return restrict(x, kernel.shape)


def test_circular_lipschitz_only_matches_converged_dykstra():
    """Dykstra's tail is slow here: after 2,000 rounds (and the feasibility
    step) the kernel is within 1% of the float64 limit of 8,000 rounds."""
    lip = 0.7
    layer = bound_layer(
        kc.CircularConv2D(3, 3, kernel_constraint=kc.LipDist(lip, mode="orthogonal", n_iter=2000)),
        (6, 6, 2),
    )
    kernel = np.random.randn(3, 3, 2, 3)
    ours = layer.kernel_constraint(kernel.astype(np.float32)).numpy()
    reference = numpy_dykstra_circular(kernel, lip, rounds=8000)
    assert np.linalg.norm(ours - reference) <= 1e-2 * np.linalg.norm(reference)
    assert np.linalg.norm(ours - reference) <= 0.05 * np.linalg.norm(kernel - reference)
    layer.kernel.assign(ours)
    assert np.linalg.norm(operator_matrix(layer, (6, 6, 2)), 2) <= lip * (1 + LIP_TOL)


def test_a_few_rounds_are_that_many_rounds_of_dykstra():
    """``n_iter`` is the number of rounds: three rounds match float64
    Dykstra's three (then its rescale by the exact norm, where still
    above ``lip``), and not its two or four."""
    lip = 0.7
    layer = bound_layer(
        kc.CircularConv2D(3, 3, kernel_constraint=kc.LipDist(lip, mode="orthogonal", n_iter=3)),
        (6, 6, 2),
    )
    kernel = np.random.default_rng(3).standard_normal((3, 3, 2, 3))
    ours = layer.kernel_constraint(kernel.astype(np.float32)).numpy().astype(np.float64)

    def rounds_then_rescaled(rounds):
        result = numpy_dykstra_circular(kernel, lip, rounds)
        blocks = np.fft.fft2(embed(result, (6, 6)), axes=(0, 1))
        return result * min(1.0, lip / np.linalg.svd(blocks, compute_uv=False).max())

    scale = np.linalg.norm(ours)
    np.testing.assert_allclose(ours, rounds_then_rescaled(3), atol=1e-4 * scale)
    for other in (2, 4):
        assert np.linalg.norm(ours - rounds_then_rescaled(other)) > 1e-3 * scale


@pytest.mark.parametrize("strides", [1, 2])
def test_circular_both_constraints_hold_on_the_dense_operator(strides):
    layer = bound_layer(
        kc.CircularConv2D(
            4,
            3,
            strides=strides,
            kernel_constraint=kc.LipDist(0.6, 1.0, mode="orthogonal", n_iter=5),
        ),
        (8, 8, 3),
    )
    k0 = layer.kernel_constraint.initial_kernel.numpy()
    layer.kernel.assign(k0 + 0.3 * np.random.randn(*k0.shape).astype(np.float32))
    kc.project(keras.Sequential([layer]))
    assert np.linalg.norm(operator_matrix(layer, (8, 8, 3)), 2) <= 0.6 * (1 + LIP_TOL)
    assert kc.distance(layer) <= 1.0 * (1 + DIST_TOL)


@pytest.mark.parametrize(
    "size,strides", [((6, 6), (1, 1)), ((6, 6), (2, 2)), ((4, 6), (2, 3)), ((6, 4), (1, 2))]
)
def test_spectral_ball_is_the_dense_svd_clipping(size, strides):
    """A kernel filling its whole input grid: the (strided) convolutions
    form a subspace of matrices on which A(k) is a scaled isometry, and
    clipping the dense matrix's singular values stays in it, so the nearest
    kernel in the ball has exactly numpy's clipped matrix as its operator."""
    layer = kc.CircularConv2D(2, size, strides=strides, use_bias=False)
    keras.Sequential([keras.Input((*size, 3)), layer])
    dense = operator_matrix(layer, (*size, 3))
    lip = 0.6 * np.linalg.norm(dense, 2)
    geometry = operators.OperatorGeometry("conv2d", size, strides, padding="circular")
    embedding = fourier.CircularEmbedding(geometry, layer.kernel.shape)
    kernel = tf.constant(layer.kernel.numpy().astype(np.float64))
    projected = embedding.restrict(embedding.project_spectral_ball(embedding.embed(kernel), lip))
    layer.kernel.assign(projected.numpy().astype(np.float32))
    np.testing.assert_allclose(
        operator_matrix(layer, (*size, 3)), numpy_clip(dense, lip), atol=1e-5 * lip
    )


@pytest.mark.parametrize(
    "size,k,channels_in,channels_out,strides",
    [
        ((8, 8), 3, 4, 3, (1, 1)),
        ((7, 9), 3, 4, 4, (1, 1)),
        ((8, 8), 3, 4, 3, (2, 2)),
        ((8, 6), 3, 2, 5, (2, 3)),
        ((4, 4), 3, 5, 5, (2, 2)),
        ((2, 2), 2, 4, 4, (2, 2)),
        ((6, 6), 3, 2, 5, (1, 1)),  # more outputs than inputs: through the grid
    ],
)
def test_one_round_on_the_taps_equals_the_grid_path(size, k, channels_in, channels_out, strides):
    """The autocorrelation and lattice pairs give the same kernel as the FFT
    of the embedded kernel, clipping and the inverse FFT."""
    geometry = operators.OperatorGeometry("conv2d", size, strides, padding="circular")
    kernel = tf.constant(
        np.random.default_rng(0).standard_normal((k, k, channels_in, channels_out))
    )
    embedding = fourier.CircularEmbedding(geometry, kernel.shape)
    lip = 0.5 * float(fourier.spectral_norm(kernel, geometry))
    on_grid = embedding.restrict(embedding.project_spectral_ball(embedding.embed(kernel), lip))
    np.testing.assert_allclose(embedding.project_kernel(kernel, lip), on_grid, atol=1e-12)


def test_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="mode='radial', or keras_capacity.CircularConv2D"):
        bound_layer(
            keras.layers.Conv2D(
                4, 3, padding="same", kernel_constraint=kc.LipDist(1.0, mode="orthogonal")
            ),
            (8, 8, 3),
        )
    with pytest.raises(ValueError, match="wraps onto itself"):
        bound_layer(
            kc.CircularConv2D(4, 3, kernel_constraint=kc.LipDist(1.0, mode="orthogonal")), (2, 2, 3)
        )


def test_train_step_every_and_mirrored_strategy(two_cpu_strategy):
    strategy = two_cpu_strategy
    with strategy.scope():
        conv = kc.CircularConv2D(
            4,
            3,
            use_bias=False,
            kernel_constraint=kc.LipDist(0.8, 2.0, mode="orthogonal", n_iter=2, every=3),
        )
        dense = keras.layers.Dense(3, kernel_constraint=kc.LipDist(0.7, 1.0, mode="orthogonal"))
        model = keras.Sequential(
            [keras.Input((6, 6, 2)), conv, keras.layers.ReLU(), keras.layers.Flatten(), dense]
        )
        kc.bind(model)
        model.compile(keras.optimizers.SGD(0.5), "mse")
    x = np.random.randn(32, 6, 6, 2).astype(np.float32)
    model.fit(x, 10 * np.random.randn(32, 3), batch_size=8, epochs=3, verbose=0)  # 12 steps
    assert np.linalg.norm(operator_matrix(conv, (6, 6, 2)), 2) <= 0.8 * (1 + LIP_TOL)
    assert kc.distance(conv) <= 2.0 * (1 + DIST_TOL)
    assert kc.lipschitz(dense) <= 0.7 * (1 + LIP_TOL) and kc.distance(dense) <= 1.0 * (1 + DIST_TOL)
    replicas = strategy.experimental_local_results(conv.kernel.value)
    np.testing.assert_array_equal(replicas[0].numpy(), replicas[1].numpy())


@pytest.mark.parametrize(
    "size,k,strides",
    [((2, 2), 2, (1, 1)), ((1, 1), 1, (1, 1)), ((2, 2), 2, (2, 2)), ((4, 4), 4, (1, 1))],
)
def test_a_kernel_filling_its_grid_is_clipped_exactly_without_a_rescale(size, k, strides):
    """The deep layers of the paper's networks: the taps fill the grid, so
    the one-round projection is the exact SVD clipping of the dense
    operator (no feasibility rescale, which would shrink it further)."""
    layer = bound_layer(
        kc.CircularConv2D(
            5,
            k,
            strides=strides,
            use_bias=False,
            kernel_constraint=kc.LipDist(1.0, mode="orthogonal"),
        ),
        (*size, 4),
    )
    kernel = np.random.default_rng(2).standard_normal(layer.kernel.shape)
    layer.kernel.assign(kernel.astype(np.float32))
    dense = operator_matrix(layer, (*size, 4))
    lip = 0.5 * np.linalg.norm(dense, 2)
    constraint = kc.LipDist(lip, mode="orthogonal")
    constraint.create_state(kernel.shape, layer.kernel_constraint.geometry, "float64")
    assert fourier.CircularEmbedding(constraint.geometry, kernel.shape).covers_grid
    constraint.initial_kernel.assign(np.zeros(kernel.shape))
    constraint.initialized.assign(1)
    projected = constraint.project(tf.constant(kernel)).numpy()
    layer.kernel.assign(projected.astype(np.float32))
    np.testing.assert_allclose(
        operator_matrix(layer, (*size, 4)), numpy_clip(dense, lip), atol=1e-5 * lip
    )


@pytest.mark.parametrize("mode", ["orthogonal", "radial"])
@pytest.mark.parametrize("distributed", [False, True], ids=["xla", "mirrored"])
def test_deep_layer_shapes_hold_their_bounds(mode, distributed, two_cpu_strategy):
    """The layer shapes of the ResNet's deep stages (the real-arithmetic
    frequencies, kernels that fill their grids, a Dense head): compiled by
    XLA on one device, and on two devices (MirroredStrategy; TensorFlow's
    XLA does not compile mirrored variables)."""
    scope = two_cpu_strategy.scope() if distributed else contextlib.nullcontext()
    with scope:
        layers = [
            kc.CircularConv2D(
                8, 3, use_bias=False, kernel_constraint=kc.LipDist(0.8, 3.0, mode=mode)
            ),
            keras.layers.MaxPooling2D(2),
            kc.CircularConv2D(
                8, 2, use_bias=False, kernel_constraint=kc.LipDist(0.8, 3.0, mode=mode)
            ),
            keras.layers.MaxPooling2D(2),
            kc.CircularConv2D(
                6, 1, use_bias=False, kernel_constraint=kc.LipDist(0.8, 3.0, mode=mode)
            ),
            keras.layers.Flatten(),
            keras.layers.Dense(3, kernel_constraint=kc.LipDist(1.0, 2.0, mode=mode)),
        ]
        model = keras.Sequential([keras.Input((4, 4, 3)), *layers])
        kc.bind(model)
        model.compile(keras.optimizers.SGD(0.5), "mse", jit_compile=not distributed)
    x = np.random.default_rng(0).standard_normal((32, 4, 4, 3)).astype(np.float32)
    model.fit(
        x, 10 * np.random.default_rng(1).standard_normal((32, 3)), batch_size=8, epochs=2, verbose=0
    )
    for layer, shape in ((layers[0], (4, 4, 3)), (layers[2], (2, 2, 8)), (layers[4], (1, 1, 8))):
        assert np.linalg.norm(operator_matrix(layer, shape), 2) <= 0.8 * (1 + LIP_TOL), layer.name
        assert kc.distance(layer) <= 3.0 * (1 + DIST_TOL)
    assert np.linalg.norm(layers[-1].kernel.numpy(), 2) <= 1.0 * (1 + LIP_TOL)
