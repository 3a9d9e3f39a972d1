"""The same computations on any Keras backend, for comparing backends.

    KERAS_BACKEND=tensorflow python tests/backend_parity.py OUT.npz

:func:`results` projects fixed kernels (exact projections now, and the
train step's projections with their in-graph estimators; every other kind
of linear layer too: depthwise, separable, grouped, 1-D, 3-D and
transposed convolutions), computes exact
norms, runs the layers, measures a small model (layer table, margins,
bounds) and retrofits a plain one (``constrain``, ``project``,
``lipschitz``, ``distance``), all from numpy inputs of fixed seeds; the
arrays it returns must agree across backends to float32 precision.
"""

import sys

import keras
import numpy as np
from keras import ops

import keras_capacity as kc
from keras_capacity import bounds, fourier, models, orthogonal, radial, screen

RNG = np.random.default_rng(7)


def _bound_layer(layer, input_shape, kernel):
    model = keras.Sequential([keras.Input(input_shape), layer])
    layer.kernel.assign(kernel.astype(np.float32))
    kc.bind(model)
    return layer


def _projections(out):
    cases = {
        "dense": (lambda c: keras.layers.Dense(6, use_bias=False, kernel_constraint=c), (9,)),
        "same": (
            lambda c: keras.layers.Conv2D(
                5, 3, padding="same", use_bias=False, kernel_constraint=c
            ),
            (8, 8, 3),
        ),
        "strided_valid": (
            lambda c: keras.layers.Conv2D(5, 3, strides=2, use_bias=False, kernel_constraint=c),
            (9, 9, 3),
        ),
        "circular": (
            lambda c: kc.CircularConv2D(5, 3, use_bias=False, kernel_constraint=c),
            (8, 8, 3),
        ),
        "circular_strided": (
            lambda c: kc.CircularConv2D(6, 3, strides=2, use_bias=False, kernel_constraint=c),
            (8, 8, 3),
        ),
        "circular_fills_grid": (
            lambda c: kc.CircularConv2D(4, 2, use_bias=False, kernel_constraint=c),
            (2, 2, 6),
        ),
    }
    for name, (make, shape) in cases.items():
        modes = ("radial",) if name in ("same", "strided_valid") else ("radial", "orthogonal")
        for mode in modes:
            layer = make(kc.LipDist(0.5, 1.5, mode=mode, n_iter=2))
            keras.Sequential([keras.Input(shape), layer])
            kernel = RNG.standard_normal(tuple(layer.kernel.shape))
            layer = _bound_layer(layer, shape, kernel)
            constraint = layer.kernel_constraint
            k0 = ops.convert_to_numpy(constraint.initial_kernel)
            moved = (k0 + 0.4 * RNG.standard_normal(k0.shape)).astype(np.float32)
            out[f"{name}/{mode}/bound_k0"] = k0
            out[f"{name}/{mode}/project_now"] = ops.convert_to_numpy(
                constraint.project(ops.convert_to_tensor(moved))
            )
            if mode == "orthogonal":
                step = orthogonal.project(
                    ops.convert_to_tensor(moved),
                    ops.convert_to_tensor(k0),
                    0.5,
                    1.5,
                    constraint.geometry,
                    1,
                )
                out[f"{name}/{mode}/train_step"] = ops.convert_to_numpy(step)
                _screened_steps(out, f"{name}/{mode}", moved, k0, constraint.geometry)
            elif not constraint.tracks_directions:  # the exact in-graph norms
                step, _ = radial.project(
                    ops.convert_to_tensor(moved),
                    ops.convert_to_tensor(k0),
                    0.5,
                    1.5,
                    1,
                    lambda v, s, c=constraint: c.estimator.in_graph(v, s, 1),
                    tuple(ops.convert_to_tensor(v) for v in constraint.projection_state),
                )
                out[f"{name}/{mode}/train_step"] = ops.convert_to_numpy(step)
            if fourier.is_circular(constraint.geometry):
                out[f"{name}/{mode}/fourier_norm"] = np.float64(
                    fourier.spectral_norm(ops.convert_to_tensor(moved), constraint.geometry)
                )


def _screened_steps(out, key, moved, k0, geometry):
    """Two screened one-round projections (keras_capacity.screen), the
    first with every bound unknown, the second from its state after a
    small move, where the layer's blocks can be screened."""
    block_screen = screen.choose(geometry, k0.shape)
    if block_screen is None:
        return
    state = block_screen.start(k0)
    kernel = ops.convert_to_tensor(moved)
    for turn in ("cold", "warm"):
        kernel, state = orthogonal.project_screened(
            kernel, ops.convert_to_tensor(k0), 0.5, 1.5, block_screen, state
        )
        out[f"{key}/screened_{turn}"] = ops.convert_to_numpy(kernel)
        out[f"{key}/screen_bounds_{turn}"] = ops.convert_to_numpy(state[1])
        kernel = kernel + 1e-3 * RNG.standard_normal(k0.shape).astype(np.float32)


L = keras.layers
# The other linear layers Keras has: {name: (layer with the given LipDist,
# input shape, whether mode="orthogonal" applies)}.
OTHER_KINDS = {
    "depthwise2d": (
        lambda c: L.DepthwiseConv2D(
            3, padding="same", depth_multiplier=2, use_bias=False, depthwise_constraint=c
        ),
        (6, 6, 3),
        False,
    ),
    "depthwise1d": (
        lambda c: L.DepthwiseConv1D(3, strides=2, use_bias=False, depthwise_constraint=c),
        (9, 3),
        False,
    ),
    "separable2d": (
        lambda c: L.SeparableConv2D(
            4, 3, strides=2, padding="same", use_bias=False, pointwise_constraint=c
        ),
        (7, 6, 3),
        False,
    ),
    "separable1d": (
        lambda c: L.SeparableConv1D(4, 3, dilation_rate=2, use_bias=False, pointwise_constraint=c),
        (9, 3),
        False,
    ),
    "grouped": (
        lambda c: L.Conv2D(6, 3, padding="same", groups=3, use_bias=False, kernel_constraint=c),
        (6, 5, 6),
        False,
    ),
    "circular_grouped": (
        lambda c: kc.CircularConv2D(6, 3, groups=2, use_bias=False, kernel_constraint=c),
        (6, 6, 4),
        True,
    ),
    "conv1d_causal": (
        lambda c: L.Conv1D(
            4, 3, padding="causal", dilation_rate=2, use_bias=False, kernel_constraint=c
        ),
        (9, 3),
        False,
    ),
    "conv3d": (
        lambda c: L.Conv3D(3, 2, padding="same", use_bias=False, kernel_constraint=c),
        (3, 4, 5, 2),
        False,
    ),
    "transposed2d": (
        lambda c: L.Conv2DTranspose(
            3, 3, strides=2, padding="same", use_bias=False, kernel_constraint=c
        ),
        (4, 3, 2),
        False,
    ),
}


def _other_kinds(out):
    """Every other kind of linear layer, bound, its kernels moved far, then
    projected: the kernels, its exact norm and distance, and its output."""
    for name, (make, shape, has_orthogonal) in OTHER_KINDS.items():
        for mode in ("radial", "orthogonal") if has_orthogonal else ("radial",):
            layer = make(kc.LipDist(0.5, 1.5, mode=mode, n_iter=2))
            model = keras.Sequential([keras.Input(shape), layer])
            for variable in layer.trainable_weights:
                variable.assign(RNG.standard_normal(tuple(variable.shape)).astype(np.float32))
            kc.bind(model)
            for variable in layer.trainable_weights:
                moved = ops.convert_to_numpy(variable) + 0.4 * RNG.standard_normal(variable.shape)
                variable.assign(moved.astype(np.float32))
            kc.project(model)
            key = f"kinds/{name}/{mode}"
            for i, variable in enumerate(layer.trainable_weights):
                out[f"{key}/kernel{i}"] = ops.convert_to_numpy(variable)
            out[f"{key}/lipschitz"] = np.float64(kc.lipschitz(layer))
            out[f"{key}/distance"] = np.float64(kc.distance(layer))
            x = RNG.standard_normal((2, *shape)).astype(np.float32)
            out[f"{key}/layers/output"] = ops.convert_to_numpy(layer(x))


def _layers(out):
    x = RNG.standard_normal((3, 6, 6, 4)).astype(np.float32)
    conv = kc.CircularConv2D(3, 3, strides=2, dilation_rate=1, use_bias=False)
    conv.build((None, 6, 6, 4))
    conv.kernel.assign(RNG.standard_normal((3, 3, 4, 3)).astype(np.float32))
    out["layers/circular_conv"] = ops.convert_to_numpy(conv(x))
    out["layers/pooling_shortcut"] = ops.convert_to_numpy(kc.PoolingShortcut(lip=1.2)(x))
    out["layers/group_sort"] = ops.convert_to_numpy(kc.GroupSort(2)(x))
    simplex = kc.SimplexClassifier(5)
    out["layers/simplex"] = ops.convert_to_numpy(simplex(x.reshape(3, -1)[:, :16]))


def _model(out):
    model = models.simple_convnet6(4, n_channels=4, lip=(2, 1.5, -1, 2), dist=(4, 4, -1, 2))
    for variable in model.trainable_weights:  # the same weights on every backend
        variable.assign(0.3 * RNG.standard_normal(tuple(variable.shape)).astype(np.float32))
    kc.bind(model)
    x = RNG.standard_normal((20, 32, 32, 3)).astype(np.float32)
    y = RNG.integers(0, 4, 20)
    rows = kc.layer_table(model)
    out["model/lipschitz"] = np.array([r["lipschitz"] for r in rows])
    out["model/distance"] = np.array([r["distance"] for r in rows])
    out["model/network_lipschitz"] = np.float64(kc.network_lipschitz(model))
    out["model/margins"] = kc.margins(model, x, y)
    q = bounds.measure_quantities(model, x, y)
    out["model/bounds"] = np.array(list(bounds.all_bounds(q, gamma=1.0).values()))
    out["model/patch_norms"] = np.array(q.patch_norms)


def _retrofit(out):
    """``constrain`` on a plain model, then ``project``, ``lipschitz`` and
    ``distance`` of its layers after the kernels moved."""
    plain = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="dense"),
        ]
    )
    for variable in plain.trainable_weights:
        variable.assign(0.5 * RNG.standard_normal(tuple(variable.shape)).astype(np.float32))
    model = kc.constrain(plain, lip=1.0, dist=2.0)
    for layer in (model.get_layer("conv"), model.get_layer("dense")):
        layer.kernel.assign(ops.convert_to_numpy(layer.kernel) * 1.5 + 0.1)
    kc.project(model)
    for name in ("conv", "dense"):
        layer = model.get_layer(name)
        out[f"retrofit/{name}/kernel"] = ops.convert_to_numpy(layer.kernel)
        out[f"retrofit/{name}/lipschitz"] = np.float64(kc.lipschitz(layer))
        out[f"retrofit/{name}/distance"] = np.float64(kc.distance(layer))


def results():
    out = {}
    _projections(out)
    _other_kinds(out)
    _layers(out)
    _model(out)
    _retrofit(out)
    return out


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    np.savez(sys.argv[1], **results())
