"""Running a sweep's trials, in one process or spread over many.

The trials are handed out by KerasTuner, through `SweepOracle`, a
KerasTuner ``Oracle`` over one choice (the trial's index) that asks the
sweep's search (`keras_capacity.sweep.search`) what to train next:
every grid point, or the values a bisection needs (with ``k`` workers, a
round of k-section). Without KerasTuner's environment variables the
search runs in this process. With them it is distributed the way
KerasTuner distributes any search: the process with
``KERASTUNER_TUNER_ID=chief`` holds the oracle and serves it on
``KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT``; every other process
(``KERASTUNER_TUNER_ID=tuner0``, ``tuner1``, ...) pulls trials from it and
trains them, in the same work directory (a shared file system across
machines).

A trial is an ordinary run directory (``WORKDIR/trials/<name>``) trained
by `keras_capacity.training.train_and_evaluate`, so the run
directories, not KerasTuner's state, say what is done: each search starts
KerasTuner afresh, a finished trial is read back without training, an
interrupted one resumes from its backup, and a failed one (diverged, bad
settings) is recorded in ``WORKDIR/failures/<name>.json`` and retried by
the next search, while the others go on. A search (bisection, frontier)
decides from the same run directories, so it too resumes where the trials
stand.
"""

import os
import time

import keras
import keras_tuner

from keras_capacity.sweep import results
from keras_capacity.sweep import search as searches
from keras_capacity.training import runs, train_and_evaluate

TRIALS_DIR, FAILURES_DIR, TUNER_DIR = "trials", "failures", "kerastuner"
# Seconds a worker waits before asking again when a search has nothing for
# it until the trials in flight finish.
POLL_S = 0.25


def is_distributed():
    return "KERASTUNER_ORACLE_IP" in os.environ


def is_chief():
    """Whether this process writes the sweep's results: the only one, or
    KerasTuner's chief."""
    return not is_distributed() or "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")


class Sweep:
    """A sweep's trials in its work directory. ``search``: what to train
    (`keras_capacity.sweep.search`; default: every trial of the grid
    ``axes``)."""

    def __init__(self, workdir, definition, axes, trials, tolerance=None, log=print, search=None):
        self.workdir, self.definition = workdir, definition
        self.axes, self.trials, self.tolerance, self.log = axes, trials, tolerance, log
        self.search = search or searches.GridSearch(axes, trials)
        self._chance = None
        self._done = {}  # trial name -> its record, once finished (it does not change)

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
            if self.search.adaptive:  # how many a search trains is not known in advance
                self.log(f"trial {trial.name}")
            else:
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
        if trial.name in self._done:
            return self._done[trial.name]
        if summary is None:
            summary = self.finished_summary(trial)
        error = None
        if summary is None and os.path.exists(self._failure_path(trial)):
            error = runs.read_json(self._failure_path(trial), "a failed trial")["error"]
        record = results.trial_record(trial, summary, error, self.run_dir(trial))
        if record["status"] == "done":
            self._done[trial.name] = record
        return record

    def started(self, trial):
        """Whether a trial was ever begun here: its run directory or its
        failure exists."""
        return trial.name in self._done or any(
            os.path.exists(path) for path in (self.run_dir(trial), self._failure_path(trial))
        )

    def records(self):
        """The records ``sweep.json`` holds: every trial of a grid; for a
        search, the baseline and every seed of each point it began (the
        values it never chose are no part of it)."""
        if not self.search.adaptive:
            return [self.record(trial) for trial in self.trials]
        begun = {trial.point for trial in self.trials if self.started(trial)}
        return [
            self.record(trial) for trial in self.trials if trial.is_baseline or trial.point in begun
        ]

    def plan(self, handed=(), workers=1):
        """What the search wants trained now (`search.Plan`), given
        the trials handed out in this search."""
        started = {t.name for t in self.trials if t.name in handed or self.started(t)}
        return self.search.plan(self.summary(), started, workers)

    def chance(self):
        """The test set's chance level (`results.chance_level`), from
        its labels, read once per process; when they cannot be read (a chief
        on a machine without the data), an unknown one that says why.

        A trial whose run summary records ``test_class_counts`` needs none
        of this (`results.summarize` prefers those)."""
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
        records = self.records()
        chance = None
        if not any(r.get("test_class_counts") for r in records):
            chance = self.chance()
        adaptive = self.search if self.search.adaptive else None
        return results.summarize(
            self.definition,
            self.axes,
            records,
            self.tolerance,
            chance,
            search=adaptive,
            estimate_axes=getattr(self.search, "estimate_axes", None),
        )

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


class SweepOracle(keras_tuner.Oracle):
    """KerasTuner's oracle of a sweep: its search space is one choice, the
    index of a trial; its trials are what the sweep's search wants next.

    Each trial is handed out at most once per search (a failed one is
    retried by the next). When the search needs results before it can
    choose (a bisection's next round), the workers that ask are told to
    wait (``IDLE``) until the trials in flight finish; when it wants
    nothing more, they are told to stop. The number of workers that have
    asked (``tuner_ids``, one in a single process) is the ``k`` of a
    k-section round. Everything it decides from is in the run directories,
    so it keeps no state of its own across searches."""

    def __init__(self, sweep):
        space = keras_tuner.HyperParameters()
        space.Choice("trial", list(range(len(sweep.trials))))
        super().__init__(
            objective=keras_tuner.Objective("test_error", "min"),
            max_trials=len(sweep.trials),
            hyperparameters=space,
            tune_new_entries=False,
        )
        self.sweep = sweep
        self._index = {trial.name: i for i, trial in enumerate(sweep.trials)}
        self._handed, self._said = set(), set()

    def populate_space(self, trial_id):
        status = keras_tuner.engine.trial.TrialStatus
        in_flight = {
            self.sweep.trials[trial.hyperparameters.values["trial"]].name
            for trial in self.ongoing_trials.values()
        }
        plan = self.sweep.plan(self._handed, workers=max(1, len(self.tuner_ids)))
        for line in plan.lines:
            if line not in self._said:
                self._said.add(line)
                self.sweep.log(line)
        for name in plan.wanted:
            if name not in self._handed:
                self._handed.add(name)
                return {"status": status.RUNNING, "values": {"trial": self._index[name]}}
        if in_flight and self.sweep.search.adaptive:
            return {"status": status.IDLE}
        if is_distributed() and self.sweep.search.adaptive:
            # The other workers, waiting, ask within POLL_S and are stopped
            # too before KerasTuner's chief checks whether all have left
            # (else it checks again only 20 s later).
            time.sleep(2 * POLL_S)
        return {"status": status.STOPPED}


class _Tuner(keras_tuner.engine.base_tuner.BaseTuner):
    """KerasTuner's view of a sweep: one trial per index of its trials."""

    def __init__(self, sweep):
        self.sweep = sweep
        self._waiting = False
        tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
        super().__init__(
            SweepOracle(sweep),
            directory=os.path.join(sweep.workdir, TUNER_DIR),
            project_name=tuner_id,
            overwrite=True,
        )

    def pre_create_trial(self):
        """A worker that was told to wait asks again after a short pause
        (KerasTuner would ask again at once)."""
        if self._waiting:
            time.sleep(POLL_S)
        self._waiting = True

    def on_trial_begin(self, trial):
        self._waiting = False
        super().on_trial_begin(trial)

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
