"""Training as a library function: `train_and_evaluate`.

One run, in named phases:

1. **resolve**: the strategy, the data and the schedule; every failure here
   is a `ConfigError` and nothing
   has been written;
2. **build and bind**: the model, its constraints' ``K0``, the optimizer
   (still nothing written);
3. **open the run**: claim the run directory, or find how far an earlier
   session got (`keras_capacity.training.runs.open_run`);
4. **fit**, resuming from the backup, with the run's callbacks;
5. **finalize**: the final projection (15 rounds, as the reference), the
   final metrics, the layer table;
6. **write**: the final model, ``summary.json``, TensorBoard's HParams and
   the capacity report.

A finished run is not trained again; a missing report is written.
"""

import dataclasses
import importlib
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_capacity import binding, constraint_values, measurement, models, network
from keras_capacity.training import callbacks, distribute, optimizers, runs
from keras_capacity.training import data as datasets
from keras_capacity.training.config import ConfigError, RunConfig

FINAL_PROJECTION_ROUNDS = 15


@dataclasses.dataclass
class Setup:
    """What the resolve phase found: how and on what the run trains."""

    strategy: object  # a tf.distribute.Strategy, distribute.JaxDataParallel or OneDevice
    cluster: dict | None
    data: datasets.Data

    @property
    def chief(self):
        return distribute.is_chief(self.cluster)

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync


def resolve(config):
    """Phase 1: the strategy and the data of ``config`` (nothing written)."""
    cluster = (
        distribute.tf_config()
        if config.strategy == "multi_worker" and not (distribute.JAX or distribute.TORCH)
        else None
    )
    distribute.split_cpu(config.cpu_devices)
    strategy = distribute.create_strategy(config.strategy)
    if config.bs % strategy.num_replicas_in_sync:
        raise ConfigError(
            f"--bs={config.bs} is not divisible by the "
            f"{strategy.num_replicas_in_sync} replicas of --strategy={config.strategy}."
        )
    try:
        data = datasets.load(
            config.dataset,
            config.data_dir,
            config.bs,
            config.limit_to,
            config.rand,
            config.augment,
            config.seed,
        )
    except (datasets.DataNotFound, FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--dataset={config.dataset}: {error}") from None
    return Setup(strategy, cluster, data)


def build_model(config, num_classes, image_shape):
    """The constrained model of ``config`` (not bound)."""
    lip, dist = config.lip, config.dist
    if config.n_proj == 0:
        lip = dist = (math.inf,) * 4
    common = dict(
        lip=lip,
        dist=dist,
        mode=config.proj_mode,
        n_iter=max(config.n_proj, 1),
        every=config.proj_freq,
        input_shape=image_shape,
    )
    if config.arch == "preact_resnet18":
        return models.preact_resnet18(num_classes, batch_norm=config.bn, **common)
    return models.ARCHITECTURES[config.arch](
        num_classes, n_channels=config.n_channels, simplex=config.simplex, **common
    )


def build_and_bind(config, setup):
    """Phase 2: the model, bound and compiled, in the strategy's scope."""
    keras.utils.set_random_seed(config.seed)
    with setup.strategy.scope():
        try:
            model = build_model(config, setup.data.num_classes, setup.data.image_shape)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        binding.bind(model)
        model.compile(
            optimizer=optimizers.create(config.optimizer, config.lr, config.momentum, config.wd),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        if config.strategy == "multi_worker":
            distribute.patch_for_multi_worker(model, next(iter(setup.data.train)))
    return model


def _restore_weights(model, path):
    """Sets ``model``'s weights (the constraints' ``K0`` included) from the
    model saved at ``path``."""
    try:
        saved = keras.models.load_model(path, compile=False)
    except Exception as error:  # any unreadable file
        raise runs.RunError(
            f"{path} is damaged ({type(error).__name__}: {error}); delete the run "
            "directory to train again."
        ) from None
    model.set_weights(saved.get_weights())


def fit(config, setup, model, run_dir, log):
    """Phase 4: trains ``model`` for the epochs the backup has not done.
    Returns the epochs run in this session."""
    log_dir = os.path.join(run_dir, "tensorboard") if setup.chief else None
    logger = callbacks.CapacityLogger(
        log_dir, setup.data.train, setup.data.test, config.histogram_every
    )
    fit_callbacks = [
        callbacks.StopOnNonFiniteLoss(),
        # Kept after fit, so a run killed before its summary resumes at the end.
        callbacks.CheckedBackupAndRestore(
            distribute.backup_dir(os.path.join(run_dir, runs.BACKUP_DIR), setup.cluster)
        ),
        keras.callbacks.LearningRateScheduler(
            callbacks.epoch_schedule(
                config.schedule_kind, config.lr, config.epochs, config.milestones, config.gamma
            )
        ),
        keras.callbacks.ProgbarLogger(),  # before the logger: its line follows the bar
        logger,
    ]
    if setup.chief:
        fit_callbacks.insert(1, callbacks.SessionRecorder(runs.SessionLog(run_dir)))
        fit_callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
        if config.save_model:
            fit_callbacks.append(callbacks.PeriodicModelSaver(run_dir, every=10))
    try:
        history = model.fit(
            setup.data.train,
            epochs=config.epochs,
            validation_data=setup.data.test,
            callbacks=fit_callbacks,
            shuffle=False,  # the pipeline shuffles
            verbose=1 if sys.stdout.isatty() else 2,
        )
    except (tf.errors.InvalidArgumentError, ValueError) as error:  # ValueError: PyTorch's
        failure = callbacks.lipdist_failure(error)
        if failure is None:
            raise
        raise runs.RunError(
            f"{failure} Lower --lr; the backup keeps the last finite epoch."
        ) from None
    return len(history.epoch)


def _evaluate(model, dataset, num_classes):
    """Mean cross-entropy, accuracy, every example's margin and the count of
    each label over the whole dataset, from one pass computed locally in
    inference mode (the same on every worker). An example counts as correct
    when its margin is positive: its own score strictly above every other
    (a tie is an error), as in `keras_capacity.measure`."""
    from scipy.special import logsumexp

    total_loss, correct, count, margins = 0.0, 0, 0, []
    label_counts = np.zeros(num_classes, np.int64)
    for inputs, labels in dataset:
        scores = np.asarray(ops.convert_to_numpy(model(inputs, training=False)), np.float64)
        labels = np.asarray(ops.convert_to_numpy(labels)).astype(np.int64)
        rows = np.arange(len(labels))
        total_loss += float(np.sum(logsumexp(scores, axis=1) - scores[rows, labels]))
        margins.append(network.margins_of_scores(scores, labels))
        correct += int(np.sum(margins[-1] > 0))
        count += len(labels)
        label_counts += np.bincount(labels, minlength=num_classes)
    return total_loss / count, correct / count, np.concatenate(margins), label_counts


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def versions():
    """The versions a run was made with, and the package's git commit
    when it runs from a checkout."""
    import keras_capacity

    found = {
        "keras_capacity": keras_capacity.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "keras_backend": keras.backend.backend(),
        "python": platform.python_version(),
    }
    backend = keras.backend.backend()
    if backend in ("jax", "torch"):
        found[backend] = importlib.import_module(backend).__version__
    source = os.path.dirname(os.path.abspath(keras_capacity.__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", source, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", source, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return found
    if commit.returncode == 0:
        found["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return found


def finalize(config, setup, model, log):
    """Phase 5: the final projection and the final metrics: ``(summary, the
    capacity record)``; the summary carries the bounds on the test error
    at their best margins."""
    if config.n_proj > 0:
        log(f"final projection ({FINAL_PROJECTION_ROUNDS} rounds) ...")
        binding.project(model, n_iter=FINAL_PROJECTION_ROUNDS)
    log("evaluating on the training and test data ...")
    classes = setup.data.num_classes
    train_loss, train_acc, _, _ = _evaluate(model, setup.data.train, classes)
    test_loss, test_acc, test_margins, test_counts = _evaluate(model, setup.data.test, classes)
    log("measuring the layers and the bounds' quantities ...")
    record = measurement.measure(
        model, setup.data.train, setup.data.test, num_classes=setup.data.num_classes
    )
    rows = record.layers
    distances = [r["distance"] for r in rows if r["distance"] is not None]
    test_error = record.test_error_bounds_json()
    summary = {
        "flags": {k: _json_number(getattr(config, k)) for k in config.flag_values()},
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "loss_gap": test_loss - train_loss,
        "accuracy_gap": train_acc - test_acc,
        "all_constraints_hold": all(r["holds"] for r in rows),
        "network_lipschitz": record.network_lipschitz,
        "sum_of_distances": float(sum(distances)),
        "spectral_complexity": network.spectral_complexity(model, rows),
        "test_margins": callbacks.margins_summary(test_margins),
        "layers": [{k: _json_number(v) for k, v in r.items()} for r in rows],
        "table": network.format_table(rows),
        "replicas": setup.replicas,
        "num_train": setup.data.num_train,
        "num_test": setup.data.num_test,
        "test_error_bounds": test_error,
        "test_class_counts": test_counts.tolist(),
    }
    return summary, record


def _numeric_hparams(config):
    """HParams values: one number per constraint entry (``lip/first``,
    ..., ``-1`` for none, as on the command line), lists as text."""
    values = {}
    for name, value in config.flag_values().items():
        field = getattr(config, name)
        if name in ("lip", "dist"):
            for entry, bound in zip(constraint_values.ENTRIES, field, strict=True):
                values[f"{name}/{entry}"] = -1.0 if bound == math.inf else bound
        elif name != "data_dir":
            values[name] = value if isinstance(field, tuple) else field
    return values


def write_hparams(log_dir, config, summary):
    """TensorBoard's HParams entry of the run: its settings and final metrics
    (with the test error and the least vacuous bound on it). A sweep's runs
    share one dashboard: ``tensorboard --logdir WORKDIR/trials``."""
    from tensorboard.plugins.hparams import api as hparams

    metrics = (
        "train_accuracy",
        "test_accuracy",
        "train_loss",
        "test_loss",
        "accuracy_gap",
        "loss_gap",
        "network_lipschitz",
        "sum_of_distances",
    )
    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hparams.hparams(_numeric_hparams(config))
        for name in metrics:
            tf.summary.scalar(f"final/{name}", summary[name], step=0)
        tf.summary.scalar("final/test_error", 1 - summary["test_accuracy"], step=0)
        bounds_found = [
            b["value"] for b in summary["test_error_bounds"].values() if b["value"] is not None
        ]
        if bounds_found:
            tf.summary.scalar("final/best_test_error_bound", min(bounds_found), step=0)


def write_capacity_report(run_dir, model, data, log, record=None):
    """The report; the run is complete once summary.json exists, so a report
    that fails says so and leaves the run as it is."""
    from keras_capacity.training import report

    log("writing the capacity report ...")
    try:
        report.write_report(run_dir, model, data, record)
    except Exception as error:  # the training result must survive
        print(
            f"warning: the capacity report failed ({type(error).__name__}: {error}); the "
            f"run itself is complete. Retry: keras-capacity-report {run_dir}",
            file=sys.stderr,
        )
    else:
        log(f"capacity report: {os.path.join(run_dir, 'report.md')}")


def _finished_run(run_dir, setup, log):
    """A complete run: its table; its report if it was never written."""
    summary = runs.read_summary(run_dir)
    for name in (runs.INITIAL_MODEL, runs.FINAL_MODEL):
        if not os.path.exists(os.path.join(run_dir, name)):
            print(
                f"warning: {os.path.join(run_dir, name)} is missing from this finished run.",
                file=sys.stderr,
            )
    log(f"{run_dir} is a finished run (delete the folder to train again).")
    final = os.path.join(run_dir, runs.FINAL_MODEL)
    if (
        setup.chief
        and not os.path.exists(os.path.join(run_dir, runs.REPORT_FILE))
        and os.path.exists(final)
    ):
        model = keras.models.load_model(final, compile=False)
        write_capacity_report(run_dir, model, setup.data, log)
    return summary


def describe(summary, run_dir):
    """The lines a finished run ends with: the table and the headline numbers."""
    holds = "yes" if summary["all_constraints_hold"] else "NO"
    bounds_line = []
    found = summary.get("test_error_bounds") or {}
    given = {name: b for name, b in found.items() if "not_applicable" not in b}
    if found and not given:
        bounds_line = ["the bounds on the test error do not apply to this model; see report.md"]
    if given:
        name, best = min(
            given.items(),
            key=lambda item: math.inf if item[1]["value"] is None else item[1]["value"],
        )
        value = "inf" if best["value"] is None else f"{best['value']:.4g}"
        bounds_line = [
            f"test error {1 - summary['test_accuracy']:.4f}; at most {value} with "
            f"probability {1 - best['delta']:g} by the least vacuous bound, {name}"
            f"{' (vacuous)' if best['vacuous'] else ''}; see report.md"
        ]
    return "\n".join(
        [
            f"\nAfter a final projection ({FINAL_PROJECTION_ROUNDS} rounds):",
            summary["table"],
            f"train acc {summary['train_accuracy']:.4f}  test acc {summary['test_accuracy']:.4f}  "
            f"gap {summary['accuracy_gap']:.4f} | network Lipschitz bound "
            f"{summary['network_lipschitz']:.4g} | every constraint holds: {holds}",
            *bounds_line,
            f"{summary.get('images_per_s', 0):.0f} images/s over {summary.get('epochs', 0)} epochs "
            f"in {summary.get('sessions', 0)} session(s); summary in "
            f"{os.path.join(run_dir, runs.SUMMARY_FILE)}",
        ]
    )


def train_and_evaluate(config: RunConfig, run_dir: str, log: Callable[[str], None] = print) -> dict:
    """Trains the run ``config`` in ``run_dir`` (or resumes or finishes it)
    and returns its summary (the contents of ``summary.json``).

    Args:
        config: a `RunConfig`.
        run_dir: the run directory (created if needed).
        log: where progress lines go.

    Raises:
        ConfigError: a setting, the data or the environment does not fit
            (nothing has been written).
        RunError: the run directory holds another run or damaged files, or
            training diverged; the message says what to do.
    """
    started = time.time()
    setup = resolve(config)
    model = build_and_bind(config, setup)
    state = runs.open_run(run_dir, config) if setup.chief else "worker"
    if state == "complete":
        return _finished_run(run_dir, setup, log)
    initial = os.path.join(run_dir, runs.INITIAL_MODEL)
    if setup.chief and state == "new":
        callbacks.save_model(model, initial)
    elif os.path.exists(initial):
        _restore_weights(model, initial)  # the run's own K0, whatever the backup holds
    elif setup.chief and state == "resume":
        print(
            f"warning: {initial} is missing: the run resumes with the K0 its backup holds, "
            "so its distances are measured as before, but its initial weights are gone.",
            file=sys.stderr,
        )
    verb = {"new": "Starting", "trained": "Finishing"}.get(state, "Resuming")
    log(
        f"{verb} run in {run_dir} ({setup.replicas} replica(s), "
        f"{setup.data.num_train} training images)"
    )
    if state == "trained":
        _restore_weights(model, os.path.join(run_dir, runs.FINAL_MODEL))
        epochs_run = 0
    else:
        epochs_run = fit(config, setup, model, run_dir, log)
    summary, record = finalize(config, setup, model, log)
    summary.update(
        epochs_this_session=epochs_run, wall_time_s=time.time() - started, versions=versions()
    )
    if setup.chief:
        summary.update(runs.SessionLog(run_dir).totals(setup.data.num_train))
        if state != "trained":
            callbacks.save_model(model, os.path.join(run_dir, runs.FINAL_MODEL))
        write_hparams(os.path.join(run_dir, "tensorboard"), config, summary)
        runs.write_summary(run_dir, summary)
        shutil.rmtree(os.path.join(run_dir, runs.BACKUP_DIR), ignore_errors=True)
        write_capacity_report(run_dir, model, setup.data, log, record)
    return summary
