"""Distribution for the training program: on TensorFlow ``tf.distribute``
strategies, logical CPU devices, ``TF_CONFIG`` and the multi-worker fixes;
on JAX ``keras.distribution.DataParallel``; on PyTorch one device.

``--strategy`` on JAX: ``auto`` is data parallelism over all accelerators
when there are several (else one device), ``mirrored`` over the
accelerators or the ``--cpu_devices`` CPU devices, ``one_device`` one
device; ``multi_worker`` is TensorFlow's and is refused.

On PyTorch Keras trains on one device (the GPU when there is one):
``auto`` and ``one_device`` are that, the others are refused.
"""

import contextlib
import json
import os

import keras
import tensorflow as tf

from keras_capacity.training.config import ConfigError

JAX = keras.backend.backend() == "jax"
TORCH = keras.backend.backend() == "torch"


def split_cpu(count):
    """Splits the CPU into ``count`` devices (nothing to do for 1).
    TensorFlow and JAX allow this only before they start; a process where
    it already runs with ``count`` devices is fine, another count is a
    `ConfigError`."""
    if JAX:
        return _split_jax_cpu(count)
    if TORCH:
        if count > 1:
            raise ConfigError(
                f"--cpu_devices={count}: the PyTorch backend trains on one device; "
                "use the TensorFlow or JAX backend for several."
            )
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if count == 1 or len(configured or []) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        raise ConfigError(
            f"--cpu_devices={count}: TensorFlow already runs in this process with "
            f"{max(len(configured or []), 1)} CPU device(s); set it before TensorFlow starts."
        ) from None


def tf_config():
    """The parsed ``TF_CONFIG``; a `ConfigError` naming what is wrong."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ConfigError(
            "--strategy=multi_worker needs TF_CONFIG (a JSON cluster spec) in the environment."
        )
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], task["index"]
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"TF_CONFIG is malformed ({error!r}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": 0}}.'
        ) from None
    members = config["cluster"].get(kind, []) if isinstance(config["cluster"], dict) else []
    if (
        not isinstance(workers, list)
        or not workers
        or kind not in ("worker", "chief")
        or not isinstance(index, int)
        or not 0 <= index < len(members)
    ):
        count = len(workers) if isinstance(workers, list) else "?"
        raise ConfigError(
            f"TF_CONFIG is malformed: task {task!r} does not name one of the "
            f"cluster's {count} workers."
        )
    return config


def _split_jax_cpu(count):
    import jax

    if count > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}"
    found = len(jax.devices("cpu"))
    if count > 1 and found != count:
        raise ConfigError(
            f"--cpu_devices={count}: JAX already runs in this process with {found} CPU "
            f"device(s); start it with XLA_FLAGS=--xla_force_host_platform_device_count={count}."
        )


class JaxDataParallel:
    """``keras.distribution.DataParallel`` over ``devices`` (or nothing for
    one device), with the two things the training program asks of a
    ``tf.distribute`` strategy."""

    def __init__(self, devices):
        self.distribution = (
            keras.distribution.DataParallel(devices=devices) if len(devices) > 1 else None
        )
        self.num_replicas_in_sync = len(devices)

    def scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()


def _jax_strategy(name):
    import jax

    if name == "multi_worker":
        raise ConfigError(
            "--strategy=multi_worker is TensorFlow's; on JAX use one process per "
            "machine with --strategy=mirrored, or the TensorFlow backend."
        )
    accelerators = [d for d in jax.devices() if d.platform != "cpu"]
    if name == "mirrored":
        return JaxDataParallel(accelerators or jax.devices("cpu"))
    if name == "auto" and len(accelerators) > 1:
        return JaxDataParallel(accelerators)
    return JaxDataParallel((accelerators or jax.devices("cpu"))[:1])


class OneDevice:
    """Keras's own placement on one device (PyTorch's), with the two
    things the training program asks of a ``tf.distribute`` strategy."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def _torch_strategy(name):
    if name not in ("auto", "one_device"):
        raise ConfigError(
            f"--strategy={name} is not available on the PyTorch backend, which trains on "
            "one device: use --strategy=auto or one_device, or the TensorFlow or JAX backend."
        )
    return OneDevice()


def create_strategy(name):
    """The ``tf.distribute`` strategy ``name`` (a `RunConfig`'s
    ``strategy``; on JAX a `JaxDataParallel`, on PyTorch a
    `OneDevice`). ``multi_worker`` must come before anything starts
    TensorFlow's runtime."""
    if JAX:
        return _jax_strategy(name)
    if TORCH:
        return _torch_strategy(name)
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and gpus):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(
            (gpus or tf.config.list_logical_devices("CPU"))[0].name
        )
    return tf.distribute.get_strategy()


def is_chief(cluster):
    """Whether this process writes the run directory (always, outside a
    multi-worker cluster)."""
    if cluster is None:
        return True
    task = cluster["task"]
    if "chief" in cluster["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def backup_dir(folder, cluster):
    """Where this process keeps its ``BackupAndRestore`` files, created:
    workers other than the chief each keep their own (Keras 3 would have
    them all write one file), inside the chief's ``folder`` so it is removed
    with it. Created here because Keras checks for the folder and then
    makes it, which fails when a worker makes its own inside it meanwhile."""
    own = folder
    if not is_chief(cluster):
        own = os.path.join(folder, f"{cluster['task']['type']}{cluster['task']['index']}")
    os.makedirs(own, exist_ok=True)
    return own


def patch_for_multi_worker(model, batch):
    """Works around Keras 3's fit under MultiWorkerMirroredStrategy
    (keras-team/keras#20585), on this model only.

    Keras builds the metrics by reducing a distributed ``(x, y)`` batch,
    which that strategy cannot do: we build them from one local batch and
    skip that step. It then averages each step's scalar metrics over axis 0,
    which a scalar lacks: the steps return them as 1-vectors instead.
    """
    model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None

    def vector_outputs(step):
        def wrapped(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}

        return wrapped

    model.train_step = vector_outputs(model.train_step)
    model.test_step = vector_outputs(model.test_step)
