"""K0 and the constraint state survive saving, loading and interruption;
replicas of a distributed model stay identical."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_capacity as kc
from keras_capacity.constraints import DISTANCE_TOLERANCE, LIPSCHITZ_TOLERANCE


def build(strategy=None):
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(
                4, 3, padding="same", kernel_constraint=kc.LipDist(0.5, 1.0, every=2)
            ),
            kc.CircularConv2D(4, 3, strides=2, kernel_constraint=kc.LipDist(0.7, 1.0)),
            keras.layers.Flatten(),
            keras.layers.Dense(3, kernel_constraint=kc.LipDist(0.6, 0.5)),
        ]
    )


def data(n=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


def compile_(model):
    model.compile(
        keras.optimizers.SGD(0.2, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def initial_kernels(model):
    return [
        layer.kernel_constraint.initial_kernel.numpy()
        for layer in model.layers
        if isinstance(getattr(layer, "kernel_constraint", None), kc.LipDist)
    ]


def run_python(code):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_save_and_load_model_in_a_new_process_keeps_k0(tmp_path):
    model = build()
    kc.bind(model)
    k0 = initial_kernels(model)
    np.savez(tmp_path / "k0.npz", *k0)
    compile_(model)
    model.fit(*data(), batch_size=8, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    out = run_python(f"""
        import numpy as np, keras
        import keras_capacity as kc
        model = keras.models.load_model({str(tmp_path / "model.keras")!r})
        saved = np.load({str(tmp_path / "k0.npz")!r})
        layers = [l for l in model.layers if hasattr(l, "kernel")]
        for i, layer in enumerate(layers):
            c = layer.kernel_constraint
            assert c.is_bound
            np.testing.assert_array_equal(c.initial_kernel.numpy(), saved[f"arr_{{i}}"])
            delta = layer.kernel.numpy().astype(np.float64) - saved[f"arr_{{i}}"]
            assert abs(kc.distance(layer) - np.linalg.norm(delta, axis=-2).sum()) < 1e-9
            assert kc.distance(layer) > 0
        # Training goes on without binding again, against the same K0; the
        # step count was restored too (8 + 2 steps: the every=2 layer projects).
        model.fit(np.random.randn(8, 8, 8, 3), np.random.randint(0, 3, 8), batch_size=4, verbose=0)
        assert int(layers[0].kernel_constraint.steps.numpy()) == 10
        for layer in layers:
            assert kc.distance(layer) <= layer.kernel_constraint.dist * (1 + {DISTANCE_TOLERANCE})
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_set_weights_into_a_clone_then_bind_keeps_k0():
    model = build()
    kc.bind(model)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    kc.bind(clone)
    for a, b in zip(initial_kernels(model), initial_kernels(clone), strict=False):
        np.testing.assert_array_equal(a, b)


class StopAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_with_the_original_k0(tmp_path):
    backup = str(tmp_path / "backup")
    first = build()
    kc.bind(first)
    k0 = initial_kernels(first)
    compile_(first)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(
            *data(),
            batch_size=8,
            epochs=4,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup), StopAtEpoch(2)],
        )
    steps_done = int(first.layers[0].kernel_constraint.steps.numpy())

    keras.utils.set_random_seed(99)  # a different initialization
    second = build()
    kc.bind(second)
    assert not np.array_equal(initial_kernels(second)[0], k0[0])
    compile_(second)
    history = second.fit(
        *data(),
        batch_size=8,
        epochs=4,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup)],
    )
    assert len(history.history["loss"]) == 2  # resumed at epoch 2 of 4
    for a, b in zip(initial_kernels(second), k0, strict=False):
        np.testing.assert_array_equal(a, b)
    assert int(second.layers[0].kernel_constraint.steps.numpy()) == steps_done + 8


@pytest.mark.slow
def test_mirrored_strategy_keeps_replicas_identical_and_feasible(two_cpu_strategy):
    strategy = two_cpu_strategy
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = build()
        kc.bind(model)
        compile_(model)
    before = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    model.fit(*data(64), batch_size=16, epochs=2, verbose=0)  # 8 steps
    for layer, old in zip([x for x in model.layers if hasattr(x, "kernel")], before, strict=True):
        replicas = [v.numpy() for v in layer.kernel.value.values]
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1])
        assert not np.allclose(replicas[0], old)
        constraint = layer.kernel_constraint
        if constraint.tracks_directions:
            state = [v.numpy() for v in constraint.power_vectors.value.values]
            np.testing.assert_array_equal(state[0], state[1])
        assert kc.lipschitz(layer) <= constraint.lip * (1 + LIPSCHITZ_TOLERANCE), layer.name
        assert kc.distance(layer) <= constraint.dist * (1 + DISTANCE_TOLERANCE), layer.name
