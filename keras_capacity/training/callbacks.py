"""Training-time callbacks: constraint curves, gaps, margins, checkpoints,
the run's session log, and checks that end a run with one clear line."""

import math
import os
import re
import time

import keras
import numpy as np
import tensorflow as tf

from keras_capacity import network
from keras_capacity.training import runs


def _safe_name(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class CapacityLogger(keras.callbacks.Callback):
    """Logs the constraints as training goes, to TensorBoard and the console.

    Every epoch: each constrained layer's Lipschitz constant and distance
    (exact values, `keras_capacity.layer_table`) under the tags
    ``capacity/lipschitz`` and ``capacity/distance``, and each divided by
    its bound (``capacity/lipschitz_over_bound``,
    ``capacity/distance_over_bound``: 1 is the constraint), one TensorBoard
    run per layer (``<log_dir>/layers/<name>``) so each quantity is one
    chart with a line per layer; the generalization gaps (``gap/loss``:
    test minus train loss, ``gap/accuracy``: train minus test accuracy, so
    both are positive when the network overfits, as in ``summary.json``);
    and a one-line summary on its own line, after Keras's progress bar. Every
    ``histogram_every`` epochs and after the last: histograms of the train and
    test margins and of the margins divided by the spectral complexity.

    Args:
        log_dir: TensorBoard folder, or ``None`` (a non-chief worker) to log
            to the console only.
        train_data, test_data: ``(inputs, labels)`` batches for the margins.
        histogram_every: epochs between margin histograms.
    """

    def __init__(self, log_dir, train_data=None, test_data=None, histogram_every=10):
        super().__init__()
        self.log_dir = log_dir
        self.train_data, self.test_data = train_data, test_data
        self.histogram_every = histogram_every
        self._writers = {}
        self.rows = None

    def _writer(self, *parts):
        key = os.path.join(*parts)
        if key not in self._writers:
            self._writers[key] = tf.summary.create_file_writer(os.path.join(self.log_dir, key))
        return self._writers[key]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.rows = network.layer_table(self.model)
        if self.log_dir:
            for row in self.rows:
                with self._writer("layers", _safe_name(row["name"])).as_default():
                    _layer_scalars(row, epoch)
            with self._writer("gaps").as_default():
                if "loss" in logs and "val_loss" in logs:
                    tf.summary.scalar("gap/loss", logs["val_loss"] - logs["loss"], step=epoch)
                if "accuracy" in logs and "val_accuracy" in logs:
                    tf.summary.scalar(
                        "gap/accuracy", logs["accuracy"] - logs["val_accuracy"], step=epoch
                    )
        last = epoch + 1 == self.params.get("epochs")
        if (epoch % self.histogram_every == 0 or last) and self.train_data is not None:
            self.log_margins(epoch)
        print(self.summary_line(epoch, logs), flush=True)

    def log_margins(self, step):
        """Margin and normalized-margin histograms at ``step``."""
        complexity = network.spectral_complexity(self.model, self.rows)
        for split, data in (("train", self.train_data), ("test", self.test_data)):
            if data is None or not self.log_dir:
                continue
            values = network.margins(self.model, data)
            with self._writer("margins").as_default():
                tf.summary.histogram(f"margins/{split}", values, step=step)
                if complexity > 0:
                    tf.summary.histogram(
                        f"normalized_margins/{split}", values / complexity, step=step
                    )

    def summary_line(self, epoch, logs):
        """``epoch N: loss .. acc .. | test .. | constraints: k/n hold ...``."""
        parts = [f"epoch {epoch + 1}:"]
        for key, label in (
            ("loss", "loss"),
            ("accuracy", "acc"),
            ("val_loss", "test loss"),
            ("val_accuracy", "test acc"),
        ):
            if key in logs:
                parts.append(f"{label} {logs[key]:.4f}")
        constrained = [
            r
            for r in self.rows
            if r["lip_constraint"] < math.inf or r["dist_constraint"] < math.inf
        ]
        if constrained:
            holding = sum(r["holds"] for r in constrained)
            lip = max(
                (
                    r["lipschitz"] / r["lip_constraint"]
                    for r in constrained
                    if r["lip_constraint"] < math.inf
                ),
                default=None,
            )
            dist = max(
                (
                    r["distance"] / r["dist_constraint"]
                    for r in constrained
                    if 0 < r["dist_constraint"] < math.inf and r["distance"] is not None
                ),
                default=None,
            )
            status = f"| constraints: {holding}/{len(constrained)} hold"
            if lip is not None:
                status += f", max lip/bound {lip:.3f}"
            if dist is not None:
                status += f", max dist/bound {dist:.3f}"
            parts.append(status)
        return " ".join(parts)

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.flush()


def _layer_scalars(row, step):
    """One layer's capacity scalars, and each divided by its bound."""
    values = (
        ("lipschitz", row["lipschitz"], row["lip_constraint"]),
        ("distance", row["distance"], row["dist_constraint"]),
    )
    for name, value, bound in values:
        if value is None:
            continue
        tf.summary.scalar(f"capacity/{name}", value, step=step)
        if 0 < bound < math.inf:
            tf.summary.scalar(f"capacity/{name}_over_bound", value / bound, step=step)


class SessionRecorder(keras.callbacks.Callback):
    """Records each finished epoch's training time in the run's
    `SessionLog`."""

    def __init__(self, session_log):
        super().__init__()
        self.session_log = session_log
        self._started = None

    def on_train_begin(self, logs=None):
        self.session_log.start()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.session_log.record_epoch(time.perf_counter() - self._started)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Ends training with a `RunError`
    when an epoch's loss is NaN or inf. It comes before the backup in the
    callback list, so the backup keeps the last finite epoch."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise runs.RunError(
                f"The training loss became {loss} in epoch {epoch + 1} (diverging training): "
                "lower --lr (the backup keeps the last finite epoch)."
            )


class CheckedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that also keeps the previous epoch's backup
    (Keras's ``double_checkpoint``, restored when the latest cannot be
    read) and, when no backup can be read, ends with a
    `RunError` naming the folder."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, double_checkpoint=True, delete_checkpoint=False)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except Exception as error:  # any unreadable backup
            raise runs.RunError(
                f"The backup in {self.backup_dir} is damaged ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). Delete that folder and "
                "run the same command again: training restarts from epoch 1 with the run's "
                "own initial model."
            ) from None


def lipdist_failure(error):
    """The ``LipDist`` message inside a TensorFlow error or PyTorch's
    ``ValueError`` (a non-finite kernel, named), or ``None``."""
    found = re.search(r"(LipDist: [^\n]*?)\s*(?:: Tensor had|\n|$)", str(error))
    return found.group(1) if found else None


class PeriodicModelSaver(keras.callbacks.Callback):
    """Saves ``model_epoch<N>.keras`` into ``directory`` every ``every``
    epochs (written to a temporary file, then renamed: never half-written)."""

    def __init__(self, directory, every=10):
        super().__init__()
        self.directory, self.every = directory, every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            save_model(self.model, os.path.join(self.directory, f"model_epoch{epoch + 1}.keras"))


def save_model(model, path):
    """``model.save(path)`` through a temporary file and an atomic rename."""
    temporary = f"{path}.partial{os.getpid()}.keras"
    model.save(temporary)
    os.replace(temporary, path)


def epoch_schedule(kind, learning_rate, epochs, milestones=(60, 120, 160), gamma=0.2):
    """The learning rate at each epoch, as the reference steps it per epoch:
    ``cosine`` (``lr (1 + cos(pi e / epochs)) / 2``), ``step`` (times
    ``gamma`` at each milestone) or ``constant``."""
    if kind == "cosine":
        return lambda epoch: learning_rate * (1 + math.cos(math.pi * epoch / epochs)) / 2
    if kind == "step":
        return lambda epoch: learning_rate * gamma ** sum(epoch >= m for m in milestones)
    if kind == "constant":
        return lambda epoch: learning_rate
    raise ValueError(f"Unknown schedule {kind!r}; expected cosine, step or constant.")


def margins_summary(values):
    """Mean, median and the fraction of positive margins, as floats."""
    values = np.asarray(values, np.float64)
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "positive": float((values > 0).mean()),
    }
