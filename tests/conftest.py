"""Test set-up: quiet TensorFlow, two CPU devices (logical ones for
MirroredStrategy on TensorFlow, simulated XLA devices on JAX), XLA
compiling fast, and the oracles the tests share.

The suite runs on TensorFlow (``make test``); ``KERAS_BACKEND=jax`` or ``torch`` runs
its JAX and PyTorch parts (``make test-jax``, ``make test-torch``:
``tests/test_backends.py`` and ``tests/test_backend_commands.py``).
"""

import gc
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
BACKEND = os.environ["KERAS_BACKEND"]

# The suite's programs are small and run a few steps, so XLA spends most of
# their time compiling them: its CPU back end at optimization level 0
# compiles faster and computes the same (XLA's CPU code uses no fast-math
# at any level). The commands the tests start get the same setting.
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}"
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
else:
    # TensorFlow's start writes C++ log lines that no log level reaches
    # (pytest-xdist's workers would print them after the results).
    sys.stderr.flush()
    _saved_stderr, _devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(_devnull, 2)
    try:
        import tensorflow as tf

        _cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    finally:
        os.dup2(_saved_stderr, 2)
        os.close(_saved_stderr)
        os.close(_devnull)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_cpu_strategy():
    """One MirroredStrategy over the two logical CPUs for the whole session:
    separate instances in one process can reuse collective-op keys and then
    mix up their all-reduces."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def pytest_collection_finish(session):
    """What is loaded by now (TensorFlow's large heap among it) lives for
    the whole session: frozen out of the garbage collector, the full
    collection that `keras.backend.clear_session()` runs after every test
    walks only what the tests made (it took 0.4 to 2 s per test)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


# A one-epoch run of the training program small enough for a test.
TINY_RUN_FLAGS = [
    "--dataset=shapes10",
    "--arch=simple_convnet6",
    "--n_channels=4",
    "--limit_to=128",
    "--bs=64",
    "--epochs=1",
    "--lr=0.05",
]


def operator_matrix(layer, input_shape):
    """The dense matrix of ``layer``'s linear map (bias removed), built by
    applying the layer itself to every basis input of ``input_shape``."""
    n = int(np.prod(input_shape))
    basis = np.eye(n, dtype=np.float32).reshape(n, *input_shape)
    zero = keras.ops.convert_to_numpy(layer(np.zeros((1, *input_shape), np.float32)))
    images = keras.ops.convert_to_numpy(layer(basis)) - zero
    return images.reshape(n, -1).T.astype(np.float64)


def worst_case_gain(apply, input_shape, steps=5000, seed=0):
    """The largest gain ``||A x|| / ||x||`` that a search over inputs finds
    for the linear map ``apply`` (TensorFlow, compiled): gradient ascent on
    the unit sphere with the longest step, each step replacing ``x`` by the
    normalized gradient of ``||A x||^2 / 2`` (``A^T A x``, taken by the
    tape through the layer itself, no formula of the library). The gain
    never exceeds ``||A||_2`` and reaches it as the top singular value
    separates from the next: the projections here leave gaps of about
    1e-3 relative, which 5,000 steps (about a second) close to float32
    precision, so a test can assert both sides: the bound holds, and it is
    attained."""

    @tf.function
    def search(x):
        best = tf.constant(0.0)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x)
                energy = 0.5 * tf.reduce_sum(tf.square(apply(x)))
            best = tf.maximum(best, tf.sqrt(2.0 * energy))  # ||A x|| at a unit x
            x = tf.math.l2_normalize(tape.gradient(energy, x))
        return best

    start = tf.math.l2_normalize(tf.random.stateless_normal((1, *input_shape), (seed, 1)))
    return float(search(start))


def free_port():
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_environment(**extra):
    """The environment for running the package's commands in a test: no
    GPU, no cluster or tuner settings or log level inherited, one CPU
    device (the command splits it where its flags ask), XLA compiling
    fast (`FAST_COMPILE`)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", XLA_FLAGS=FAST_COMPILE)
    for name in (
        "TF_CONFIG",
        "TF_CPP_MIN_LOG_LEVEL",
        "KERASTUNER_TUNER_ID",
        "KERASTUNER_ORACLE_IP",
        "KERASTUNER_ORACLE_PORT",
    ):
        env.pop(name, None)
    env.update(extra)
    return env
