"""Training-time callbacks: constraint curves, gaps, margins, checkpoints."""

import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_capacity import measure


def _safe_name(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class CapacityLogger(keras.callbacks.Callback):
    """Logs the constraints as training goes, to TensorBoard and the console.

    Every epoch: each constrained layer's Lipschitz constant and distance
    (exact values, :func:`keras_capacity.layer_table`) under the tags
    ``capacity/lipschitz`` and ``capacity/distance``, one TensorBoard run per
    layer (``<log_dir>/layers/<name>``) so each quantity is one chart with a
    line per layer; the train-test gaps of loss and accuracy
    (``gap/loss``, ``gap/accuracy``); and a one-line summary. Every
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
        self.rows = measure.layer_table(self.model)
        if self.log_dir:
            for row in self.rows:
                with self._writer("layers", _safe_name(row["name"])).as_default():
                    tf.summary.scalar("capacity/lipschitz", row["lipschitz"], step=epoch)
                    if row["distance"] is not None:
                        tf.summary.scalar("capacity/distance", row["distance"], step=epoch)
            with self._writer("gaps").as_default():
                for metric in ("loss", "accuracy"):
                    if metric in logs and f"val_{metric}" in logs:
                        gap = logs[metric] - logs[f"val_{metric}"]
                        tf.summary.scalar(f"gap/{metric}", gap, step=epoch)
        last = epoch + 1 == self.params.get("epochs")
        if (epoch % self.histogram_every == 0 or last) and self.train_data is not None:
            self.log_margins(epoch)
        print(self.summary_line(epoch, logs), flush=True)

    def log_margins(self, step):
        """Margin and normalized-margin histograms at ``step``."""
        complexity = measure.spectral_complexity(self.model, self.rows)
        for split, data in (("train", self.train_data), ("test", self.test_data)):
            if data is None or not self.log_dir:
                continue
            values = measure.margins(self.model, data)
            with self._writer("margins").as_default():
                tf.summary.histogram(f"margins/{split}", values, step=step)
                if complexity > 0:
                    tf.summary.histogram(f"normalized_margins/{split}", values / complexity,
                                         step=step)

    def summary_line(self, epoch, logs):
        """``epoch N: loss .. acc .. | test .. | constraints: k/n hold ...``."""
        parts = [f"epoch {epoch + 1}:"]
        for key, label in (("loss", "loss"), ("accuracy", "acc"),
                           ("val_loss", "test loss"), ("val_accuracy", "test acc")):
            if key in logs:
                parts.append(f"{label} {logs[key]:.4f}")
        constrained = [r for r in self.rows
                       if r["lip_constraint"] < math.inf or r["dist_constraint"] < math.inf]
        if constrained:
            holding = sum(r["holds"] for r in constrained)
            lip = max((r["lipschitz"] / r["lip_constraint"] for r in constrained
                       if r["lip_constraint"] < math.inf), default=None)
            dist = max((r["distance"] / r["dist_constraint"] for r in constrained
                        if 0 < r["dist_constraint"] < math.inf and r["distance"] is not None),
                       default=None)
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
    temporary = path + ".partial.keras"
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
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "positive": float((values > 0).mean())}
