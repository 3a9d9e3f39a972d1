"""Distribution for the training program on TensorFlow: ``tf.distribute``
strategies, logical CPU devices, ``TF_CONFIG`` and the multi-worker fixes."""

import json
import os

import tensorflow as tf

from keras_capacity.training.config import ConfigError


def split_cpu(count):
    """Splits the CPU into ``count`` logical devices (nothing to do for 1).
    TensorFlow allows this only before it starts; a process where it
    already runs with ``count`` devices is fine, another count is a
    :class:`ConfigError`."""
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
    """The parsed ``TF_CONFIG``; a :class:`ConfigError` naming what is wrong."""
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


def create_strategy(name):
    """The ``tf.distribute`` strategy ``name`` (a :class:`RunConfig`'s
    ``strategy``). ``multi_worker`` must come before anything starts
    TensorFlow's runtime."""
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
    """Where this process keeps its ``BackupAndRestore`` files: workers
    other than the chief each keep their own (Keras 3 would have them all
    write one file), inside the chief's ``folder`` so it is removed with it."""
    if is_chief(cluster):
        return folder
    return os.path.join(folder, f"{cluster['task']['type']}{cluster['task']['index']}")


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
