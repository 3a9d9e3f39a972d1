"""The JAX and PyTorch backends against TensorFlow processes: a model
moving between the backends with its ``K0``, and ``train_main.py`` run on
this backend and then on TensorFlow from the same start. A file of its
own so that pytest-xdist (``--dist loadfile``) runs it beside
`test_backends`: the two take about as long."""

import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import TINY_RUN_FLAGS, command_environment
from other_backends import (
    BACKEND,
    PARITY_RTOL,
    ROOT,
    on_tensorflow,
    other_backends_only,
    tensorflow_files,
)

import keras_capacity as kc

pytestmark = other_backends_only


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
        env=command_environment(KERAS_BACKEND=backend),
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
