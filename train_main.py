"""Train one of the paper's networks with Lipschitz and distance constraints.

    python train_main.py --flagfile=examples/cifar10.flags
    python train_main.py --flagfile=examples/demo.flags --epochs=3
    python train_main.py --helpfull

The flags are those of the reference's ``train.py``, with its defaults
(``--bs`` 256, ``--lr`` 0.003, ``--wd`` 1e-4, ``--momentum`` 0.9, ``--epochs``
100, ``--n_proj`` 1, ``--proj_freq`` 15, ...), plus ``--strategy``,
``--seed``, ``--augment`` and the schedule. Everything goes into the run
directory ``--logdir``: ``flags.txt`` (reproduces the run), the initial and
final models, ``summary.json``, TensorBoard logs, and a backup from which
the same command resumes after the process is killed.
"""

import json
import math
import os
import shutil
import sys
import time

from absl import app, flags

from keras_capacity.training import data as datasets
from keras_capacity import models
from keras_capacity.training import optimizers, runs

FLAGS = flags.FLAGS

flags.DEFINE_enum("dataset", "shapes10", datasets.DATASETS,
                  "Dataset; shapes10 is bundled and needs no download.")
flags.DEFINE_string("data_dir", None,
                    "TFDS data directory (cifar10/100), or the tiny-imagenet-200 folder.")
flags.DEFINE_enum("arch", "preact_resnet18", tuple(models.ARCHITECTURES), "Architecture.")
flags.DEFINE_integer("n_channels", 512, "Channels of every layer of simple_convnet6/11.")
flags.DEFINE_bool("simplex", False,
                  "simple_convnet6/11: flatten + SimplexClassifier (if the classifier's "
                  "dist is 0) or constrained Dense, instead of the 1x1 conv head.")
flags.DEFINE_list("lip", ["-1", "-1", "-1", "-1"],
                  "Lipschitz bounds: first conv, convs in blocks, shortcut, classifier; -1 = none.")
flags.DEFINE_list("dist", ["-1", "-1", "-1", "-1"],
                  "(2,1) distance-to-init bounds, same four entries; -1 = none; a classifier "
                  "entry of 0 selects the SimplexClassifier.")
flags.DEFINE_enum("proj_mode", "orthogonal", ("radial", "orthogonal"),
                  "Projection onto the Lipschitz ball: orthogonal (the nearest kernel, "
                  "per-frequency SVD clipping and Dykstra) or radial (rescaling; much "
                  "cheaper on a CPU).")
flags.DEFINE_integer("n_proj", 1, "Alternating projection rounds per projection; 0 = train "
                     "without projections (the bounds are then only reported).", lower_bound=0)
flags.DEFINE_integer("proj_freq", 15, "Project every proj_freq optimizer steps.", lower_bound=1)
flags.DEFINE_integer("bs", 256, "Global batch size (over all replicas).", lower_bound=1)
flags.DEFINE_integer("epochs", 100, "Training epochs.", lower_bound=1)
flags.DEFINE_float("lr", 0.003, "Learning rate.", lower_bound=0)
flags.DEFINE_float("wd", 1e-4, "Weight decay, coupled as PyTorch's (sgd, lars); adam and "
                   "lamb use none, as the reference.", lower_bound=0)
flags.DEFINE_float("momentum", 0.9, "Momentum (sgd, lars).", lower_bound=0)
flags.DEFINE_enum("optimizer", "sgd", optimizers.OPTIMIZERS, "Optimizer.")
flags.DEFINE_enum("schedule", "auto", ("auto", "cosine", "step", "constant"),
                  "Learning-rate schedule per epoch; auto = cosine for the convnets, "
                  "step (x gamma at the milestones) for the ResNet.")
flags.DEFINE_list("milestones", ["60", "120", "160"], "Epochs of the step schedule.")
flags.DEFINE_float("gamma", 0.2, "Factor of the step schedule.", lower_bound=0)
flags.DEFINE_bool("bn", False, "BatchNorm in the ResNet.")
flags.DEFINE_bool("rand", False, "Random training labels (drawn with --seed).")
flags.DEFINE_integer("limit_to", -1, "Train on the first N samples; -1 = all.")
flags.DEFINE_bool("augment", False, "Random 4-pixel-padded crops and horizontal flips.")
flags.DEFINE_integer("seed", 0, "Seed of initialization, shuffling and random labels.")
flags.DEFINE_string("logdir", None, "Run directory; default runs/<dataset>_<arch>.")
flags.DEFINE_bool("save_model", False, "Also save the model every 10 epochs.")
flags.DEFINE_enum("strategy", "auto", ("auto", "mirrored", "one_device", "multi_worker"),
                  "auto: MirroredStrategy over all GPUs if there is one, else the default "
                  "strategy; multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.")
flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical devices "
                     "(to try multi-device strategies without GPUs).", lower_bound=1)
flags.DEFINE_integer("histogram_every", 10, "Epochs between margin histograms.", lower_bound=1)

# The flags that define a run (and go into its flag file).
RUN_FLAGS = (
    "dataset", "data_dir", "arch", "n_channels", "simplex", "lip", "dist", "proj_mode",
    "n_proj", "proj_freq", "bs", "epochs", "lr", "wd", "momentum", "optimizer", "schedule",
    "milestones", "gamma", "bn", "rand", "limit_to", "augment", "seed", "save_model",
    "strategy", "cpu_devices", "histogram_every",
)
FINAL_PROJECTION_ROUNDS = 15


def _usage(message):
    raise app.UsageError(message)


def _bounds(name):
    try:
        return models.constraint_list(f"--{name}", getattr(FLAGS, name))
    except ValueError as error:
        _usage(str(error))


def _tf_config():
    """The parsed ``TF_CONFIG``; a usage error naming what is wrong."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        _usage("--strategy=multi_worker needs TF_CONFIG (a JSON cluster spec) in the environment.")
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], task["index"]
    except (ValueError, KeyError, TypeError) as error:
        _usage(f"TF_CONFIG is malformed ({error!r}); expected "
               '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
               '"index": 0}}.')
    if not isinstance(workers, list) or not workers or kind not in ("worker", "chief") \
            or not isinstance(index, int) or not 0 <= index < len(config["cluster"].get(kind, [])):
        _usage(f"TF_CONFIG is malformed: task {task!r} does not name one of the cluster's "
               f"{len(workers) if isinstance(workers, list) else '?'} workers.")
    return config


def validate():
    """Every check that needs no TensorFlow; ends the program on bad input."""
    lip, dist = _bounds("lip"), _bounds("dist")
    try:
        milestones = tuple(int(m) for m in FLAGS.milestones)
    except ValueError:
        _usage(f"--milestones must be integers, got {FLAGS.milestones}.")
    if FLAGS.arch != "preact_resnet18" and FLAGS.bn:
        _usage("--bn applies to --arch=preact_resnet18 only.")
    if FLAGS.dataset == "tiny_imagenet" and FLAGS.arch != "preact_resnet18":
        _usage("tiny_imagenet has 64x64 images; the simple convnets need 32x32: use "
               "--arch=preact_resnet18.")
    if FLAGS.limit_to == 0 or FLAGS.limit_to < -1:
        _usage(f"--limit_to must be a positive number of samples or -1, got {FLAGS.limit_to}.")
    config = _tf_config() if FLAGS.strategy == "multi_worker" else None
    return lip, dist, milestones, config


def split_cpu(count):
    import tensorflow as tf

    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def create_strategy(name):
    import tensorflow as tf

    if name == "multi_worker":  # must come before anything initializes TensorFlow
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and gpus):
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)
    return tf.distribute.get_strategy()


def is_chief(config):
    if config is None:
        return True
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def backup_dir(run_dir, config):
    """Where this process keeps its BackupAndRestore files: workers other
    than the chief each keep their own (Keras 3 would have them all write
    one file), inside the chief's folder so it is removed with it."""
    folder = os.path.join(run_dir, "backup")
    if is_chief(config):
        return folder
    return os.path.join(folder, f"{config['task']['type']}{config['task']['index']}")


def build_model(num_classes, image_shape, lip, dist):
    if FLAGS.n_proj == 0:
        lip = dist = (math.inf,) * 4
    common = dict(lip=lip, dist=dist, mode=FLAGS.proj_mode, n_iter=max(FLAGS.n_proj, 1),
                  every=FLAGS.proj_freq, input_shape=image_shape)
    if FLAGS.arch == "preact_resnet18":
        return models.preact_resnet18(num_classes, batch_norm=FLAGS.bn, **common)
    builder = models.ARCHITECTURES[FLAGS.arch]
    return builder(num_classes, n_channels=FLAGS.n_channels, simplex=FLAGS.simplex, **common)


def patch_for_multi_worker(model, batch):
    """Works around Keras 3's fit under MultiWorkerMirroredStrategy
    (keras-team/keras#20585), on this model only.

    Keras builds the metrics by reducing a distributed ``(x, y)`` batch,
    which that strategy cannot do: we build them from one local batch and
    skip that step. It then averages each step's scalar metrics over axis 0,
    which a scalar lacks: the steps return them as 1-vectors instead.
    """
    import tensorflow as tf

    model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None

    def vector_outputs(step):
        def wrapped(data):
            return {name: tf.reshape(value, [1]) for name, value in step(data).items()}
        return wrapped

    model.train_step = vector_outputs(model.train_step)
    model.test_step = vector_outputs(model.test_step)


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _evaluate(model, dataset):
    """Mean cross-entropy and accuracy over the whole dataset, computed
    locally in inference mode (the same on every worker)."""
    import numpy as np
    from scipy.special import logsumexp

    total_loss, correct, count = 0.0, 0, 0
    for inputs, labels in dataset:
        scores = np.asarray(model(inputs, training=False), np.float64)
        labels = np.asarray(labels).astype(np.int64)
        rows = np.arange(len(labels))
        total_loss += float(np.sum(logsumexp(scores, axis=1) - scores[rows, labels]))
        correct += int(np.sum(scores.argmax(axis=1) == labels))
        count += len(labels)
    return total_loss / count, correct / count


def write_hparams(log_dir, values, metrics):
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams

    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hparams.hparams({k: (runs.format_value(v) if isinstance(v, (list, tuple)) else v)
                         for k, v in values.items() if v is not None})
        for name, value in metrics.items():
            tf.summary.scalar(f"final/{name}", value, step=0)


def write_capacity_report(run_dir, model, data):
    """The run is complete once summary.json exists; a report that fails
    says so and leaves it as it is (rerun `python -m keras_capacity.training.report`)."""
    from keras_capacity.training import report

    try:
        report.write_report(run_dir, model, data)
    except Exception as error:  # noqa: BLE001  the training result must survive
        print(f"The capacity report failed ({type(error).__name__}: {error}); the run "
              f"itself is complete. Retry: python -m keras_capacity.training.report {run_dir}",
              file=sys.stderr)
    else:
        print(f"capacity report: {run_dir}/report.md")


def main(argv):
    if len(argv) > 1:
        _usage(f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    started = time.time()
    lip, dist, milestones, config = validate()
    run_dir = FLAGS.logdir or os.path.join("runs", f"{FLAGS.dataset}_{FLAGS.arch}")
    values = {name: getattr(FLAGS, name) for name in RUN_FLAGS}

    split_cpu(FLAGS.cpu_devices)
    import keras

    import keras_capacity as kc
    from keras_capacity import measure
    from keras_capacity.training import callbacks

    strategy = create_strategy(FLAGS.strategy)
    replicas = strategy.num_replicas_in_sync
    if FLAGS.bs % replicas:
        _usage(f"--bs={FLAGS.bs} is not divisible by the {replicas} replicas of "
               f"--strategy={FLAGS.strategy}.")
    try:
        data = datasets.load(FLAGS.dataset, FLAGS.data_dir, FLAGS.bs, FLAGS.limit_to,
                             FLAGS.rand, FLAGS.augment, FLAGS.seed)
    except (FileNotFoundError, ValueError) as error:
        _usage(f"--dataset={FLAGS.dataset}: {error}")

    chief = is_chief(config)
    try:
        runs.check_writable(run_dir)
        state = runs.claim(run_dir, values) if chief else "worker"
    except (OSError, runs.RunMismatch) as error:
        _usage(str(error))
    if state == "complete":
        summary = runs.read_summary(run_dir)
        print(f"{run_dir} is a finished run; its summary (delete the folder to train again):")
        print(summary["table"])
        return
    print(f"{'Resuming' if state == 'resume' else 'Starting'} run in {run_dir} "
          f"({replicas} replica(s), {data.num_train} training images)", flush=True)

    keras.utils.set_random_seed(FLAGS.seed)
    schedule = FLAGS.schedule
    if schedule == "auto":
        schedule = "step" if FLAGS.arch == "preact_resnet18" else "cosine"
    with strategy.scope():
        model = build_model(data.num_classes, data.image_shape, lip, dist)
        kc.bind(model)
        model.compile(
            optimizer=optimizers.create(FLAGS.optimizer, FLAGS.lr, FLAGS.momentum, FLAGS.wd),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        if FLAGS.strategy == "multi_worker":
            patch_for_multi_worker(model, next(iter(data.train)))
    initial = os.path.join(run_dir, "model_init.keras")
    if chief and not os.path.exists(initial):
        callbacks.save_model(model, initial)

    log_dir = os.path.join(run_dir, "tensorboard") if chief else None
    logger = callbacks.CapacityLogger(log_dir, data.train, data.test, FLAGS.histogram_every)
    fit_callbacks = [
        # Kept after fit, so a run killed before its summary resumes at the end.
        keras.callbacks.BackupAndRestore(backup_dir(run_dir, config), delete_checkpoint=False),
        keras.callbacks.LearningRateScheduler(
            callbacks.epoch_schedule(schedule, FLAGS.lr, FLAGS.epochs, milestones, FLAGS.gamma)),
        logger,
    ]
    if chief:
        fit_callbacks.append(keras.callbacks.TensorBoard(log_dir))
        if FLAGS.save_model:
            fit_callbacks.append(callbacks.PeriodicModelSaver(run_dir, every=10))
    train_started = time.time()
    history = model.fit(data.train, epochs=FLAGS.epochs, validation_data=data.test,
                        callbacks=fit_callbacks, shuffle=False,  # the pipeline shuffles
                        verbose=2 if not sys.stdout.isatty() else 1)
    train_time = time.time() - train_started
    epochs_run = len(history.epoch)

    if FLAGS.n_proj > 0:
        kc.project(model, n_iter=FINAL_PROJECTION_ROUNDS)
    train_loss, train_acc = _evaluate(model, data.train)
    test_loss, test_acc = _evaluate(model, data.test)
    rows = measure.layer_table(model)
    table = measure.format_table(rows)
    test_margins = measure.margins(model, data.test)
    summary = {
        "flags": {k: _json_number(v) for k, v in values.items()},
        "train_loss": train_loss, "train_accuracy": train_acc,
        "test_loss": test_loss, "test_accuracy": test_acc,
        "loss_gap": test_loss - train_loss, "accuracy_gap": train_acc - test_acc,
        "all_constraints_hold": all(r["holds"] for r in rows),
        "network_lipschitz": measure.network_lipschitz(model, measure.kernel_norms(rows)),
        "spectral_complexity": measure.spectral_complexity(model, rows),
        "test_margins": callbacks.margins_summary(test_margins),
        "layers": [{k: _json_number(v) for k, v in r.items()} for r in rows],
        "table": table,
        "epochs_this_session": epochs_run,
        "wall_time_s": time.time() - started,
        "train_time_s": train_time,
        "images_per_s": data.num_train * epochs_run / max(train_time, 1e-9),
        "replicas": replicas,
    }
    if chief:
        callbacks.save_model(model, os.path.join(run_dir, "model_final.keras"))
        write_hparams(log_dir, {k: v for k, v in values.items() if k != "data_dir"}, {
            "train_accuracy": train_acc, "test_accuracy": test_acc, "train_loss": train_loss,
            "test_loss": test_loss, "accuracy_gap": train_acc - test_acc,
            "loss_gap": test_loss - train_loss,
        })
        runs.write_summary(run_dir, summary)
        shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
        write_capacity_report(run_dir, model, data)
    print(f"\nAfter a final projection ({FINAL_PROJECTION_ROUNDS} rounds):")
    print(table)
    print(f"train acc {train_acc:.4f}  test acc {test_acc:.4f}  gap {train_acc - test_acc:.4f}"
          f" | network Lipschitz bound {summary['network_lipschitz']:.4g}"
          f" | every constraint holds: {'yes' if summary['all_constraints_hold'] else 'NO'}")
    print(f"{summary['images_per_s']:.0f} images/s; summary in {run_dir}/summary.json")


if __name__ == "__main__":
    app.run(main)
