"""Running a sweep's trials, in one process or spread over many.

The trials are handed out by KerasTuner (its ``GridSearch`` oracle over one
choice: the trial's index). Without KerasTuner's environment variables the
search runs in this process. With them it is distributed the way
KerasTuner distributes any search: the process with
``KERASTUNER_TUNER_ID=chief`` holds the oracle and serves it on
``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT``; every other process
(``KERASTUNER_TUNER_ID=tuner0``, ``tuner1``, ...) pulls trials from it and
trains them, in the same work directory (a shared file system across
machines).

A trial is an ordinary run directory (``WORKDIR/trials/<name>``) trained
by :func:`keras_capacity.training.train_and_evaluate`, so the run
directories, not KerasTuner's state, say what is done: each search starts
KerasTuner afresh, a finished trial is read back without training, an
interrupted one resumes from its backup, and a failed one (diverged, bad
settings) is recorded in ``WORKDIR/failures/<name>.json`` and retried by
the next search, while the others go on.
"""

import os

import keras
import keras_tuner

from keras_capacity.sweep import results
from keras_capacity.training import runs, train_and_evaluate

TRIALS_DIR, FAILURES_DIR, TUNER_DIR = "trials", "failures", "kerastuner"


def is_distributed():
    return "KERASTUNER_ORACLE_IP" in os.environ


def is_chief():
    """Whether this process writes the sweep's results: the only one, or
    KerasTuner's chief."""
    return not is_distributed() or "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


class Sweep:
    """A sweep's trials in its work directory."""

    def __init__(self, workdir, definition, axes, trials, tolerance=None, log=print):
        self.workdir, self.definition = workdir, definition
        self.axes, self.trials, self.tolerance, self.log = axes, trials, tolerance, log
        self._chance = None

    def run_dir(self, trial):
        return os.path.join(self.workdir, TRIALS_DIR, trial.name)

    def _failure_path(self, trial):
        return os.path.join(self.workdir, FAILURES_DIR, f"{trial.name}.json")

    def finished_summary(self, trial):
        """The trial's summary if its run directory holds it finished."""
        run_dir = self.run_dir(trial)
        if not os.path.exists(os.path.join(run_dir, runs.SUMMARY_FILE)):
            return None
        if runs.saved_config(run_dir) != trial.config:
            return None
        return runs.read_summary(run_dir)

    def run(self, index):
        """Trains (or reads back) trial ``index``; returns its record."""
        trial = self.trials[index]
        summary = self.finished_summary(trial)
        if summary is None:
            self.log(f"trial {index + 1}/{len(self.trials)}: {trial.name}")
            try:
                summary = train_and_evaluate(
                    trial.config, self.run_dir(trial), log=lambda line: None
                )
            except Exception as error:  # a failed trial is recorded; the others go on
                message = f"{type(error).__name__}: {error}"
                os.makedirs(os.path.dirname(self._failure_path(trial)), exist_ok=True)
                runs.write_json(self._failure_path(trial), {"error": message})
                self.log(f"trial {trial.name} failed: {message}")
            finally:
                keras.backend.clear_session()
        if summary is not None and os.path.exists(self._failure_path(trial)):
            os.remove(self._failure_path(trial))
        self.write_results()
        return self.record(trial, summary)

    def record(self, trial, summary=None):
        if summary is None:
            summary = self.finished_summary(trial)
        error = None
        if summary is None and os.path.exists(self._failure_path(trial)):
            error = runs.read_json(self._failure_path(trial), "a failed trial")["error"]
        return results.trial_record(trial, summary, error, self.run_dir(trial))

    def chance(self):
        """The test set's chance level (:func:`results.chance_level`), from
        its labels, read once per process; when they cannot be read (a chief
        on a machine without the data), an unknown one that says why.

        A trial whose run summary records ``test_class_counts`` needs none
        of this (:func:`results.summarize` prefers those)."""
        if self._chance is None:
            config = self.trials[0].config
            try:
                counts = count_test_labels(config.dataset, config.data_dir)
                self._chance = results.chance_level(counts, f"the test labels of {config.dataset}")
            except Exception as error:  # the sweep goes on; sweep.md says what is unchecked
                self._chance = results.unknown_chance(
                    f"the test labels of {config.dataset} could not be read: "
                    f"{type(error).__name__}: {error}"
                )
        return self._chance

    def summary(self):
        records = [self.record(trial) for trial in self.trials]
        chance = None
        if not any(r.get("test_class_counts") for r in records):
            chance = self.chance()
        return results.summarize(self.definition, self.axes, records, self.tolerance, chance)

    def write_results(self):
        results.write(self.workdir, self.summary(), self.axes)


def count_test_labels(dataset, data_dir=None):
    """How many test images each class of ``dataset`` has (the test split
    does not depend on ``--limit_to``, the seed or the random labels, so
    the whole sweep shares it)."""
    import numpy as np

    from keras_capacity.training import data

    loaded = data.load(dataset, data_dir, batch_size=1024)
    counts = np.zeros(loaded.num_classes, np.int64)
    for _, labels in loaded.test:
        counts += np.bincount(np.asarray(labels), minlength=loaded.num_classes)
    return counts.tolist()


class _Tuner(keras_tuner.engine.base_tuner.BaseTuner):
    """KerasTuner's view of a sweep: one trial per grid index."""

    def __init__(self, sweep):
        self.sweep = sweep
        space = keras_tuner.HyperParameters()
        space.Choice("trial", list(range(len(sweep.trials))))
        oracle = keras_tuner.oracles.GridSearchOracle(
            objective=keras_tuner.Objective("test_error", "min"),
            max_trials=len(sweep.trials),
            hyperparameters=space,
            tune_new_entries=False,
        )
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        super().__init__(
            oracle,
            directory=os.path.join(sweep.workdir, TUNER_DIR),
            project_name=tuner_id,
            overwrite=True,
        )

    def run_trial(self, trial, *args, **kwargs):
        record = self.sweep.run(trial.hyperparameters.get("trial"))
        return {"test_error": record.get("test_error", 1.0) if record["status"] == "done" else 1.0}

    def save_model(self, trial_id, model, step=0):
        """Trials save their own models in their run directories."""

    def load_model(self, trial):
        raise NotImplementedError("a sweep's models are in its trials' run directories")


def search(sweep):
    """Runs every trial (this process's share, when distributed); the chief
    (or the only process) then writes the results."""
    _Tuner(sweep).search(verbose=0)
    summary = sweep.summary()
    if is_chief():
        results.write(sweep.workdir, summary, sweep.axes)
    return summary
