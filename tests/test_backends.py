"""The library on Keras's JAX and PyTorch backends (``make test-jax`` and
``make test-torch`` run this file and `test_backend_commands` with
``KERAS_BACKEND`` set): the same numbers as on TensorFlow, the constraint's
state through JAX's stateless train step and PyTorch's eager one, data
parallelism on two CPU devices (JAX), PyTorch's data loaders and a sweep."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TINY_RUN_FLAGS, command_environment, operator_matrix
from other_backends import (
    BACKEND,
    PARITY_RTOL,
    ROOT,
    jax_only,
    other_backends_only,
    tensorflow_files,
    torch_only,
)

import keras_capacity as kc
from keras_capacity import models
from keras_capacity.constraints import DISTANCE_TOLERANCE, LIPSCHITZ_TOLERANCE

pytestmark = other_backends_only

PARITY_ON_TENSORFLOW = (
    "import runpy, sys; sys.argv = ['backend_parity.py', sys.argv[1]]; "
    "import keras; keras.utils.set_random_seed(0); "
    "runpy.run_path('tests/backend_parity.py', run_name='__main__')"
)


def test_the_same_numbers_as_on_tensorflow(tmp_path):
    """Same kernels in, same projected kernels, norms, layer outputs and
    bounds out, to float32 precision."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import backend_parity

    (parity,) = tensorflow_files(PARITY_ON_TENSORFLOW, ["parity.npz"], tmp_path)
    expected = np.load(parity)
    keras.utils.set_random_seed(0)
    found = backend_parity.results()
    assert set(found) == set(expected) and len(found) > 40
    for name, value in found.items():
        reference = expected[name].astype(np.float64)
        np.testing.assert_allclose(
            np.asarray(value, np.float64),
            reference,
            rtol=PARITY_RTOL,
            atol=float32_floor(name, reference),
            err_msg=name,
        )


# The arrays that one float32 computation produces as a whole: kernels out
# of a projection (each entry a sum over every frequency or singular
# direction, so rounded on the scale of the largest), layer outputs, and
# margins (differences of float32 scores). An entry near zero in them is
# only known to a few float32 units of the array's largest entry; 16 such
# units (1.9e-6 of the largest, where the backends were seen 4 apart) is
# the floor. Norms, distances and bounds are numbers of their own: no floor.
FLOAT32_ARRAYS = (
    "bound_k0",
    "project_now",
    "train_step",
    "screened",
    "layers/",
    "kernel",
    "margins",
)


def float32_floor(name, reference):
    if not any(part in name for part in FLOAT32_ARRAYS):
        return 0.0
    return 16 * float(np.finfo(np.float32).eps) * float(np.max(np.abs(reference), initial=0.0))


def one_step(model, x, y):
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


@pytest.mark.parametrize("padding", ["same", "circular"])
def test_every_15_projects_at_steps_15_and_30_only(padding):
    """The step count, K0 and the estimator's state travel through JAX's
    stateless train step, and PyTorch's eager step marks itself as one:
    dropped or unmarked, the projections would land elsewhere."""
    lip, dist = 0.5, 3.0
    make = kc.CircularConv2D if padding == "circular" else keras.layers.Conv2D
    kwargs = {} if padding == "circular" else {"padding": "same"}
    conv = make(4, 3, use_bias=False, kernel_constraint=kc.LipDist(lip, dist, every=15), **kwargs)
    model = keras.Sequential([keras.Input((6, 6, 2)), conv])
    kc.bind(model)
    model.compile(keras.optimizers.SGD(2.0), "mse")
    k0 = np.array(conv.kernel_constraint.initial_kernel.numpy())
    rng = np.random.default_rng(0)
    inside = []
    for step in range(1, 31):
        x = rng.standard_normal((4, 6, 6, 2)).astype(np.float32)
        one_step(model, x, 10 * rng.standard_normal((4, 6, 6, 4)).astype(np.float32))
        assert int(conv.kernel_constraint.steps.numpy()) == step
        norm = np.linalg.norm(operator_matrix(conv, (6, 6, 2)), 2)
        holds = norm <= lip * (1 + LIPSCHITZ_TOLERANCE) and kc.distance(conv) <= dist * (
            1 + DISTANCE_TOLERANCE
        )
        inside.append(holds)
        if step in (15, 30):
            assert holds, (step, norm)
    assert inside.count(True) == 2, inside  # only the projecting steps
    np.testing.assert_array_equal(conv.kernel_constraint.initial_kernel.numpy(), k0)


def test_large_steps_keep_the_tracked_and_exact_bounds():
    layers = [
        keras.layers.Conv2D(
            6, 3, padding="same", use_bias=False, kernel_constraint=kc.LipDist(0.5, 20.0)
        ),
        keras.layers.Flatten(),
        keras.layers.Dense(5, use_bias=False, kernel_constraint=kc.LipDist(0.5, 20.0)),
    ]
    model = keras.Sequential([keras.Input((10, 10, 4)), *layers])
    kc.bind(model)
    model.compile(keras.optimizers.SGD(1.0), "mse")
    rng = np.random.default_rng(1)
    for _ in range(15):
        one_step(
            model,
            rng.standard_normal((8, 10, 10, 4)).astype(np.float32),
            10 * rng.standard_normal((8, 5)).astype(np.float32),
        )
        assert np.linalg.norm(operator_matrix(layers[0], (10, 10, 4)), 2) <= 0.5 * (
            1 + LIPSCHITZ_TOLERANCE
        )
        assert np.linalg.norm(layers[2].kernel.numpy(), 2) <= 0.5 * (1 + LIPSCHITZ_TOLERANCE)


REPEATED_PROJECTION = """
import sys, jax, numpy as np
from keras_capacity import operators, orthogonal
geometry = operators.OperatorGeometry("conv2d", (16, 16), padding="circular")
rng = np.random.default_rng(0)
kernel = (0.05 * rng.standard_normal((3, 3, 64, 64))).astype("float32")
project = jax.jit(lambda k: orthogonal.project(k, 0.9 * k, 1.0, float("inf"), geometry, 1))
for _ in range(12):
    projected = jax.block_until_ready(project(kernel))
np.save(sys.argv[1], np.asarray(projected))
"""


@jax_only
def test_repeated_compiled_projections_of_a_wide_conv_finish(tmp_path):
    """The 130 decompositions of a 64-channel 16x16 circular projection,
    compiled and called again and again on the CPU, return (JAX's batched
    LAPACK kernels deadlocked the second or twelfth call on 2 cores, with
    batches of 16 matrices as with whole ones); the result lies in the
    spectral ball by numpy's SVD of its FFT blocks."""
    subprocess.run(
        [sys.executable, "-c", REPEATED_PROJECTION, tmp_path / "projected.npy"],
        cwd=ROOT,
        check=True,
        env=command_environment(KERAS_BACKEND="jax", XLA_FLAGS=""),  # XLA as users run it
        timeout=240,
    )
    projected = np.load(tmp_path / "projected.npy").astype(np.float64)
    blocks = np.fft.fft2(np.pad(projected, ((0, 13), (0, 13), (0, 0), (0, 0))), axes=(0, 1))
    largest = np.linalg.svd(blocks, compute_uv=False).max()
    assert 0.99 < largest <= 1.0 + LIPSCHITZ_TOLERANCE


def traced_products(jaxpr):
    """The precision of every matrix product and convolution in ``jaxpr``,
    nested ones (conditionals, loops, compiled calls) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            yield str(eqn.params["precision"])
        for value in eqn.params.values():
            for inner in value if isinstance(value, list | tuple) else [value]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from traced_products(inner)


@jax_only
@pytest.mark.parametrize("mode", ["orthogonal", "radial"])
def test_the_projection_multiplies_at_float32_precision_and_the_model_at_the_default(mode):
    """Accelerators round default-precision float32 products through
    TensorFloat-32 (2.9e-4 relative on an H200, above the screens' 1e-5
    inflation); the CPU does not, so the traced step is read instead: the
    projection adds products at full precision only, and the model's own
    keep the default."""
    import jax

    from keras_capacity import backend

    def step_products(constraint):
        keras.utils.set_random_seed(0)
        conv = kc.CircularConv2D(4, 3, use_bias=False, kernel_constraint=constraint)
        model = keras.Sequential(
            [keras.Input((6, 6, 2)), conv, keras.layers.Flatten(), keras.layers.Dense(3)]
        )
        kc.bind(model)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        x, y = np.ones((2, 6, 6, 2), np.float32), np.ones((2, 3), np.float32)
        one_step(model, x, y)
        variables = (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
        state = tuple([v.value for v in group] for group in variables)
        return list(traced_products(jax.make_jaxpr(model.train_step)(state, (x, y)).jaxpr))

    def matmul(a):
        return keras.ops.matmul(a, a)

    with jax.default_matmul_precision("float32"):  # how JAX writes that precision
        (full,) = traced_products(jax.make_jaxpr(matmul)(np.eye(3, dtype=np.float32)).jaxpr)
    unconstrained = step_products(None)
    constrained = step_products(kc.LipDist(0.5, 3.0, mode=mode))
    assert set(unconstrained) == {"None"}
    assert constrained.count("None") == len(unconstrained)
    assert constrained.count(full) == len(constrained) - len(unconstrained) > 0
    eager = backend.compile_eager(matmul)
    assert list(traced_products(jax.make_jaxpr(eager)(np.eye(3, dtype=np.float32)).jaxpr)) == [full]


@torch_only
def test_torch_projections_turn_tensorfloat32_off_and_restore_it(monkeypatch):
    """The flags a PyTorch user may set for speed are off while the
    projection decomposes (in the train step and called eagerly), and the
    user's values are back after it."""
    import torch

    from keras_capacity import backend

    seen = []
    eigh = backend.eigh

    def recording_eigh(matrices):
        seen.append((matmul.allow_tf32, cudnn.allow_tf32))
        return eigh(matrices)

    monkeypatch.setattr(backend, "eigh", recording_eigh)
    conv = kc.CircularConv2D(
        4, 3, use_bias=False, kernel_constraint=kc.LipDist(0.1, mode="orthogonal")
    )
    model = keras.Sequential([keras.Input((6, 6, 2)), conv])
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = True
    try:
        kc.bind(model)
        model.compile(keras.optimizers.SGD(0.1), "mse")
        one_step(model, np.ones((2, 6, 6, 2), np.float32), np.ones((2, 6, 6, 4), np.float32))
        in_step = len(seen)
        kc.project(model)
        after = matmul.allow_tf32, cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
    assert 0 < in_step < len(seen)
    assert set(seen) == {(False, False)}
    assert after == (True, True)


@pytest.mark.parametrize("shape", [(5, 5), (1, 64, 64), (9, 64, 64), (2, 3, 16, 16), (3, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_the_largest_eigenvalue_is_numpys(shape, dtype):
    """Against numpy's float64 ``eigvalsh``, on Hermitian matrices with set
    spectra whose two largest eigenvalues differ by 1e-4 relative (JAX's
    CPU path finds it by bisection on the tridiagonal form)."""
    from keras_capacity import backend

    rng = np.random.default_rng(0)
    *batch, n = shape[:-1]
    x = rng.standard_normal((*batch, n, n))
    if dtype == np.complex64:
        x = x + 1j * rng.standard_normal((*batch, n, n))
    q = np.linalg.qr(x)[0]
    values = rng.uniform(0.0, 3.0, (*batch, n))
    values[..., -1] = 4.0 * rng.uniform(0.5, 1.5, batch)
    if n > 1:
        values[..., -2] = values[..., -1] * (1 - 1e-4)
    matrices = (q * values[..., None, :]) @ np.conj(np.swapaxes(q, -1, -2))
    expected = np.linalg.eigvalsh(matrices)[..., -1]
    found = keras.ops.convert_to_numpy(
        backend.largest_eigenvalue(keras.ops.convert_to_tensor(matrices.astype(dtype)))
    )
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=2e-6)


def test_fit_without_bind_is_one_clear_error():
    conv = keras.layers.Conv2D(4, 3, padding="same", kernel_constraint=kc.LipDist(0.5))
    model = keras.Sequential([keras.Input((6, 6, 2)), conv])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"keras_capacity\.bind\(model\)"):
        one_step(model, np.zeros((2, 6, 6, 2), np.float32), np.zeros((2, 6, 6, 4), np.float32))


@jax_only
def test_data_parallel_on_two_cpu_devices():
    import jax

    assert len(jax.devices()) == 2
    distribution = keras.distribution.DataParallel(devices=jax.devices())
    with distribution.scope():
        model = models.simple_convnet6(
            10, n_channels=8, lip=(2, 1.5, -1, 2), dist=(4, 4, -1, 2), mode="orthogonal", every=2
        )
        kc.bind(model)
        model.compile(
            keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
        x = np.random.default_rng(0).standard_normal((64, 32, 32, 3)).astype(np.float32)
        model.fit(x, np.arange(64) % 10, batch_size=16, epochs=2, verbose=0)  # 8 steps
    for layer, constraint in kc.binding.constrained_layers(model):
        shards = [np.asarray(shard.data) for shard in layer.kernel.value.addressable_shards]
        assert len(shards) == 2
        np.testing.assert_array_equal(shards[0], shards[1])  # the replicas agree
        assert int(constraint.steps.numpy()) == 8
    assert all(row["holds"] for row in kc.layer_table(model))


@torch_only
def test_strategies_beyond_one_device_are_refused_on_torch():
    from keras_capacity.training import distribute
    from keras_capacity.training.config import ConfigError

    assert distribute.create_strategy("auto").num_replicas_in_sync == 1
    assert distribute.create_strategy("one_device").num_replicas_in_sync == 1
    for name in ("mirrored", "multi_worker"):
        with pytest.raises(ConfigError, match=f"--strategy={name} is not available on the PyTorch"):
            distribute.create_strategy(name)
    with pytest.raises(ConfigError, match="--cpu_devices=2: the PyTorch backend"):
        distribute.split_cpu(2)


def numpy_margins(scores, labels):
    """The margin ``v_y - max_{i != y} v_i`` by its definition, in float64."""
    scores = np.asarray(scores, np.float64)
    own = scores[np.arange(len(labels)), labels]
    others = np.where(np.arange(scores.shape[1]) == labels[:, None], -np.inf, scores)
    return own - others.max(axis=1)


@torch_only
def test_torch_data_loaders_feed_the_measurements():
    """A ``torch.utils.data.DataLoader`` of ``(x, y)`` batches is data
    for ``margins`` and ``measure``: the margins of the model's own scores,
    and the data norm of the inputs (numpy, float64)."""
    import torch

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", kernel_constraint=kc.LipDist(1.0, 2.0)),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    kc.bind(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 5, 40)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=16
    )
    expected = numpy_margins(model.predict(x, verbose=0), y)
    np.testing.assert_allclose(kc.margins(model, loader), expected, rtol=1e-5, atol=1e-6)
    record = kc.measure(model, loader, loader)
    np.testing.assert_allclose(record.train_margins, expected, rtol=1e-5, atol=1e-6)
    assert record.quantities.n == 40
    assert record.quantities.data_norm == pytest.approx(np.linalg.norm(x.astype(np.float64)))
    assert record.test_accuracy == pytest.approx(np.mean(expected > 0))


@torch_only
def test_a_non_finite_kernel_stops_fit_with_its_name_on_torch():
    conv = keras.layers.Conv2D(4, 3, padding="same", kernel_constraint=kc.LipDist(0.5))
    model = keras.Sequential([keras.Input((6, 6, 2)), conv])
    kc.bind(model)
    model.compile(keras.optimizers.SGD(1e30), "mse")
    with pytest.raises(ValueError, match=r"LipDist: the kernel .*conv2d.* holds NaN, inf"):
        one_step(model, np.full((2, 6, 6, 2), 1e30, np.float32), np.zeros((2, 6, 6, 4), np.float32))


@torch_only
def test_a_sweep_trains_its_trials_on_torch(tmp_path):
    """A bisection's trials are runs of the training program on this
    backend, each with its constraints held and its bounds."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_capacity.sweep",
            *TINY_RUN_FLAGS,
            "--search=bisect",
            "--grid=dist.inner:64,4",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        env=command_environment(KERAS_BACKEND=BACKEND),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"results in {tmp_path}" in result.stdout
    trials = json.loads((tmp_path / "sweep.json").read_text())["trials"]
    assert trials and all(trial["status"] == "done" for trial in trials)
    for trial in trials:
        summary = json.loads((pathlib.Path(trial["run_dir"]) / "summary.json").read_text())
        assert summary["versions"]["keras_backend"] == "torch"
        assert summary["all_constraints_hold"] and len(summary["test_error_bounds"]) == 12
