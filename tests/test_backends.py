"""The library and the training program on Keras's JAX and PyTorch
backends (``make test-jax`` and ``make test-torch`` run this file with
``KERAS_BACKEND`` set): the same numbers as on TensorFlow, the constraint's
state through JAX's stateless train step and PyTorch's eager one, models
moving between backends, data parallelism on two CPU devices (JAX),
PyTorch's data loaders, and ``train_main.py``."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TINY_RUN_FLAGS, command_environment, operator_matrix

import keras_capacity as kc
from keras_capacity import models
from keras_capacity.constraints import DISTANCE_TOLERANCE, LIPSCHITZ_TOLERANCE

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="the JAX and PyTorch jobs run this file (make test-jax, -torch)"
)
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX's own compilation and distribution")
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's own")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_tensorflow(code, *args, timeout=300):
    """Runs ``code`` in a TensorFlow-backend Python process."""
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=command_environment(KERAS_BACKEND="tensorflow", XLA_FLAGS=""),
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# `make test` runs this file on JAX, then on PyTorch; both compare with the
# same TensorFlow computations, which the first job keeps in the folder
# $KC_TENSORFLOW_REFERENCES (emptied by the Makefile first) for the second.
SHARED_REFERENCES = os.environ.get("KC_TENSORFLOW_REFERENCES")


def tensorflow_files(code, names, tmp_path):
    """The files ``names`` that ``code`` writes (given their paths as its
    arguments) in a TensorFlow process: from the shared folder when a job
    before this one wrote them there, else made now (and kept there)."""
    folder = pathlib.Path(SHARED_REFERENCES) if SHARED_REFERENCES else tmp_path
    paths = [folder / name for name in names]
    if all(path.exists() for path in paths):
        return paths
    made = tmp_path / "tensorflow"
    made.mkdir(exist_ok=True)
    on_tensorflow(code, *(made / name for name in names))
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in zip(names, paths, strict=True):  # whole files: copied aside, renamed
        shutil.copy(made / name, f"{path}.part")
        os.replace(f"{path}.part", path)
    return paths


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


# Every number agrees element-wise to the project's relative tolerance.
PARITY_RTOL = 1e-5
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
        env=command_environment(KERAS_BACKEND="jax", XLA_FLAGS=""),
        timeout=240,
    )
    projected = np.load(tmp_path / "projected.npy").astype(np.float64)
    blocks = np.fft.fft2(np.pad(projected, ((0, 13), (0, 13), (0, 0), (0, 0))), axes=(0, 1))
    largest = np.linalg.svd(blocks, compute_uv=False).max()
    assert 0.99 < largest <= 1.0 + LIPSCHITZ_TOLERANCE


def test_fit_without_bind_is_one_clear_error():
    conv = keras.layers.Conv2D(4, 3, padding="same", kernel_constraint=kc.LipDist(0.5))
    model = keras.Sequential([keras.Input((6, 6, 2)), conv])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"keras_capacity\.bind\(model\)"):
        one_step(model, np.zeros((2, 6, 6, 2), np.float32), np.zeros((2, 6, 6, 4), np.float32))


SAVE_ON_TENSORFLOW = """
import sys, numpy as np, keras, keras_capacity as kc
from keras_capacity import models
model = models.simple_convnet6(10, n_channels=4, lip=(2, 1.5, -1, 2), dist=(4, 4, -1, 2),
                               mode="orthogonal", every=3)
kc.bind(model)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(keras.optimizers.SGD(0.5), loss)
x = np.random.default_rng(0).standard_normal((8, 32, 32, 3)).astype("float32")
model.fit(x, np.arange(8) % 10, batch_size=8, epochs=2, verbose=0)
model.save(sys.argv[1])
np.savez(sys.argv[2], **{layer.name: c.initial_kernel.numpy()
                        for layer, c in kc.binding.constrained_layers(model)})
"""

LOAD_ON_TENSORFLOW = """
import sys, numpy as np, keras, keras_capacity as kc
model = keras.models.load_model(sys.argv[1], compile=False)
saved = np.load(sys.argv[2])
for layer, c in kc.binding.constrained_layers(model):
    np.testing.assert_array_equal(c.initial_kernel.numpy(), saved[layer.name])
    assert c.mode == "orthogonal" and c.every == 3
print("K0 and settings kept")
"""


def test_a_model_moves_between_backends_with_its_k0(tmp_path):
    saved_model, k0 = tensorflow_files(SAVE_ON_TENSORFLOW, ["saved.keras", "k0.npz"], tmp_path)
    model = keras.models.load_model(saved_model, compile=False)
    saved = np.load(k0)
    pairs = kc.binding.constrained_layers(model)
    for layer, constraint in pairs:
        np.testing.assert_array_equal(constraint.initial_kernel.numpy(), saved[layer.name])
        assert (constraint.mode, constraint.every, constraint.is_bound) == ("orthogonal", 3, True)
    # Trained on this backend from there, the original K0 stays; saved back, TensorFlow reads it.
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    x = np.random.default_rng(1).standard_normal((8, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0)
    assert all(row["holds"] for row in kc.layer_table(model))
    model.save(tmp_path / "other.keras")
    result = on_tensorflow(LOAD_ON_TENSORFLOW, tmp_path / "other.keras", k0)
    assert "K0 and settings kept" in result.stdout


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


# On JAX the run is data parallel on two CPU devices; PyTorch trains on one.
# tf.data's first shuffled order depends on how a trainer creates its
# iterator: TensorFlow's under a distribution strategy (mirrored, one
# device) draws the order that JAX's and PyTorch's trainers draw.
RUN_FLAGS = [
    *TINY_RUN_FLAGS,
    "--lip=2,1.5,-1,2",
    "--dist=4,4,-1,2",
    "--proj_freq=1",
    *(
        ["--strategy=mirrored", "--cpu_devices=2"]
        if BACKEND == "jax"
        else ["--strategy=one_device"]
    ),
]


def train_main(run_dir, backend):
    return subprocess.run(
        [sys.executable, "train_main.py", *RUN_FLAGS, f"--logdir={run_dir}"],
        cwd=ROOT,
        env=command_environment(KERAS_BACKEND=backend, XLA_FLAGS=""),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_main_on_this_backend(tmp_path):
    """The run on this backend, then the same run on TensorFlow: the same
    flags, this run's initial model (one seed draws different weights on
    different backends) and the same batches (tf.data, seeded); the final
    numbers agree to the precision the backends share (`compare_runs`)."""
    run_dir = tmp_path / "run"
    result = train_main(run_dir, BACKEND)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["replicas"] == (2 if BACKEND == "jax" else 1)
    assert summary["all_constraints_hold"]
    assert summary["versions"]["keras_backend"] == BACKEND
    assert (run_dir / "report.md").exists()
    same_run = tmp_path / "tensorflow"
    same_run.mkdir()
    for name in ("flags.txt", "model_init.keras"):
        shutil.copy(run_dir / name, same_run / name)
    result = train_main(same_run, "tensorflow")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming run" in result.stdout  # from this run's initial model
    compare_runs(run_dir, same_run)


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


def kernel_norms(kernel):
    """The norms the bounds take of a kernel or of its distance to K0, in
    numpy float64, by their definitions in keras_capacity.bounds."""
    k = np.asarray(kernel, np.float64)
    k = k[None, None] if k.ndim == 2 else k  # (kh, kw, in, out)
    filters = k.reshape(-1, k.shape[-1])
    return {
        "21": np.sqrt((k**2).sum(axis=2)).sum(),
        "filter21": np.linalg.norm(filters, axis=0).sum(),
        "fro": np.linalg.norm(filters),
        "1inf": np.abs(filters).sum(axis=0).max(),
        "filter_max": np.linalg.norm(filters, axis=0).max(),
    }


# report.json's per-layer quantities: of the kernel, or of its move from K0.
KERNEL_QUANTITIES = {"norm_fro": "fro", "norm_1inf": "1inf", "filter_norm_max": "filter_max"}
DISTANCE_QUANTITIES = {
    "dist21": "21",
    "filter_dist21": "filter21",
    "dist_fro": "fro",
    "dist_1inf": "1inf",
}


def compare_runs(other_dir, tf_dir):
    """The two runs' summaries and reports, number by number.

    The trained kernels differ by float32 rounding that the steps carry on
    (a few units of the kernel's largest entry). The norms of a kernel and
    of its move from the shared K0 therefore differ by at most the same
    norm of the kernels' difference (the triangle inequality), computed
    here from the two final models: tight where a layer moved far, loose
    where it moved little (a distance of 3e-3 after two steps shares about
    three digits). A bound multiplies or sums per-layer norms and
    distances, each at most to the first power, so its relative difference
    is at most the sum of theirs over the layers. Losses, Lipschitz
    constants, data norms and margins: ``PARITY_RTOL``. Accuracies: equal,
    up to the examples whose two largest scores lie within 1e-4 (where the
    backends' float32 sums could order them either way).
    """
    summaries = [json.loads((d / "summary.json").read_text()) for d in (other_dir, tf_dir)]
    reports = [
        json.loads((d / "report.json").read_text())["quantities"] for d in (other_dir, tf_dir)
    ]
    other_run, tf_run = summaries
    assert tf_run["versions"]["keras_backend"] == "tensorflow"
    for key in ("train_loss", "test_loss", "network_lipschitz"):
        assert other_run[key] == pytest.approx(tf_run[key], rel=PARITY_RTOL), key
    for key in ("mean", "median"):
        assert other_run["test_margins"][key] == pytest.approx(
            tf_run["test_margins"][key], rel=PARITY_RTOL, abs=1e-6
        ), key
    for key in ("n", "data_norm", "data_max_abs", "data_max_coordinate_norm", "margin"):
        assert reports[0][key] == pytest.approx(reports[1][key], rel=PARITY_RTOL, abs=1e-6), key
    np.testing.assert_allclose(reports[0]["patch_norms"], reports[1]["patch_norms"], rtol=1e-5)
    # The layer table: same layers, bounds and verdicts; the same Lipschitz constants.
    for mine, theirs in zip(other_run["layers"], tf_run["layers"], strict=True):
        for key in ("name", "kind", "lip_constraint", "dist_constraint", "holds", "params"):
            assert mine[key] == theirs[key], (mine["name"], key)
        assert mine["lipschitz"] == pytest.approx(theirs["lipschitz"], rel=PARITY_RTOL)
    # Kernel norms and distances, to the triangle inequality.
    models = [
        keras.models.load_model(d / "model_final.keras", compile=False) for d in (other_dir, tf_dir)
    ]
    pairs = zip(*(kc.binding.constrained_layers(m) for m in models), strict=True)
    relative = []  # each layer's largest relative limit
    for index, ((layer, constraint), (other, other_constraint)) in enumerate(pairs):
        k0 = np.asarray(constraint.initial_kernel.numpy(), np.float64)
        np.testing.assert_array_equal(k0, other_constraint.initial_kernel.numpy())
        kernel = np.asarray(layer.kernel.numpy(), np.float64)
        gap = kernel_norms(kernel - np.asarray(other.kernel.numpy(), np.float64))
        limits = []
        for quantities, of in ((KERNEL_QUANTITIES, kernel), (DISTANCE_QUANTITIES, kernel - k0)):
            for key, norm in quantities.items():
                mine, theirs = reports[0][key][index], reports[1][key][index]
                assert abs(mine - theirs) <= gap[norm] * (1 + 1e-6) + 1e-9, (layer.name, key)
                limits.append(gap[norm] / max(kernel_norms(of)[norm], 1e-30))
        assert (
            abs(other_run["layers"][index]["distance"] - tf_run["layers"][index]["distance"])
            <= gap["21"] * (1 + 1e-6) + 1e-9
        )
        relative.append(max(limits))
    tolerance = sum(relative) + 2 * len(relative) * PARITY_RTOL
    assert other_run["spectral_complexity"] == pytest.approx(
        tf_run["spectral_complexity"], rel=tolerance
    )
    bounds_of = [s["test_error_bounds"] for s in summaries]
    assert set(bounds_of[0]) == set(bounds_of[1]) and len(bounds_of[0]) == 12
    for name, bound in bounds_of[0].items():
        other = bounds_of[1][name]
        assert (bound["value"] is None) == (other["value"] is None), name
        if bound["value"] is not None:
            assert bound["value"] == pytest.approx(other["value"], rel=tolerance), name
    # Accuracies: the same, but for near ties of the two largest scores.
    ties = near_ties(models[0], other_run["flags"])
    for split in ("train", "test"):
        count = other_run[f"num_{split}"]
        flips = round(abs(other_run[f"{split}_accuracy"] - tf_run[f"{split}_accuracy"]) * count)
        assert flips <= ties[split], (split, flips, ties[split])


def near_ties(model, flags):
    """``{split: examples whose two largest scores lie within 1e-4}``."""
    from keras_capacity.training import data as datasets

    data = datasets.load(
        flags["dataset"], None, flags["bs"], flags["limit_to"], flags["rand"], False, flags["seed"]
    )
    ties = {}
    for split, dataset in (("train", data.train), ("test", data.test)):
        inputs = np.concatenate([np.asarray(x) for x, _ in dataset])
        scores = np.sort(np.asarray(model.predict(inputs, verbose=0), np.float64), axis=1)
        ties[split] = int(np.sum(scores[:, -1] - scores[:, -2] <= 1e-4))
    return ties
