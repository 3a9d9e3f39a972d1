"""Resuming is verified, not assumed: a run stopped after its second epoch
continues from the weights its backup holds, at the next epoch (or, when
the latest backup is damaged, from the previous epoch's backup); a sweep
killed inside a trial resumes that trial from its backup.

What a resumed session did is read from what it leaves: the weights it
starts from (taken at ``on_train_begin``, after the backup's restore, and
compared with the weights the first session had at the end of each epoch),
the epochs it runs (``epoch N:`` lines, ``sessions.json``). A restart from
scratch would start from the initial model and count every epoch again.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_RUN_FLAGS, command_environment

from keras_capacity.training import RunConfig, callbacks, runs, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = RunConfig(
    dataset="shapes10",
    arch="simple_convnet6",
    n_channels=4,
    limit_to=128,
    bs=64,
    epochs=3,
    lr=0.05,
    lip="2,1.5,-1,2",
    dist="4,4,-1,2",
    proj_freq=1,
    proj_mode="radial",
)


class Stop(Exception):
    """Ends the first session after its second epoch (its backup written)."""


def watch(monkeypatch, stop_after=None):
    """Records, for the sessions that follow, the trainable weights at the
    start of training (after the backup's restore: the logger's
    ``on_train_begin`` comes after it) and at the end of every epoch, by
    epoch index; ends the session after epoch index ``stop_after``."""
    seen = {"start": None, "epochs": {}}
    logger = callbacks.CapacityLogger
    end_of_epoch = logger.on_epoch_end

    def weights(model):
        return [np.array(v.numpy()) for v in model.trainable_weights]

    def on_train_begin(self, logs=None):
        seen["start"] = weights(self.model)

    def on_epoch_end(self, epoch, logs=None):
        end_of_epoch(self, epoch, logs)
        seen["epochs"][epoch] = weights(self.model)
        if epoch == stop_after:
            raise Stop

    monkeypatch.setattr(logger, "on_train_begin", on_train_begin, raising=False)
    monkeypatch.setattr(logger, "on_epoch_end", on_epoch_end)
    return seen


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run of three epochs stopped after its second: its run directory
    (backup of epoch 2, and of epoch 1 kept beside it) and the weights it
    had after each epoch."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as patch:
        seen = watch(patch, stop_after=1)
        with pytest.raises(Stop):
            train_and_evaluate(CONFIG, str(run_dir), log=lambda line: None)
    backup = run_dir / runs.BACKUP_DIR
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 2
    assert json.loads((backup / "training_metadata.json.bkp").read_text())["epoch"] == 1
    assert not (run_dir / runs.SUMMARY_FILE).exists()
    assert not same(seen["epochs"][0], seen["epochs"][1])  # the epochs can be told apart
    return run_dir, seen["epochs"]


def resume(stopped, tmp_path, monkeypatch, damage=None):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped[0], run_dir)
    if damage:
        damage(run_dir / runs.BACKUP_DIR)
    seen = watch(monkeypatch)
    lines = []
    summary = train_and_evaluate(CONFIG, str(run_dir), log=lines.append)
    sessions = json.loads((run_dir / runs.SESSIONS_FILE).read_text())
    return summary, seen, [s["epochs"] for s in sessions], lines


def test_a_resumed_run_continues_from_its_latest_backup(stopped, tmp_path, monkeypatch):
    summary, seen, sessions, lines = resume(stopped, tmp_path, monkeypatch)
    assert any(line.startswith("Resuming run") for line in lines)
    assert same(seen["start"], stopped[1][1])  # the weights after epoch 2, exactly
    assert sorted(seen["epochs"]) == [2]  # only the third epoch is trained
    assert sessions == [2, 1] and summary["epochs_this_session"] == 1
    assert summary["all_constraints_hold"]


def test_a_damaged_latest_backup_falls_back_to_the_previous_epoch(stopped, tmp_path, monkeypatch):
    """A backup cut off while it was written (its latest weights file
    truncated) falls back to the previous epoch's, which Keras keeps
    beside it (``double_checkpoint``): the run repeats epoch 2, from the
    weights it had after epoch 1."""

    def truncate(backup):
        path = backup / "latest.weights.h5"
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])

    summary, seen, sessions, _ = resume(stopped, tmp_path, monkeypatch, damage=truncate)
    assert same(seen["start"], stopped[1][0])  # the weights after epoch 1, exactly
    assert sorted(seen["epochs"]) == [1, 2]
    assert sessions == [2, 2] and summary["epochs_this_session"] == 2
    assert summary["all_constraints_hold"]


@pytest.mark.slow
def test_a_sweep_killed_inside_a_trial_resumes_it_from_its_backup(tmp_path):
    """Killed right after a trial's first epoch (the line a session prints
    after the epoch's backup), the sweep run again trains that trial's
    second epoch only: one epoch in each of its two sessions, and its
    second session's first epoch is epoch 2."""
    workdir = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "keras_capacity.sweep",
        *TINY_RUN_FLAGS,
        "--epochs=2",
        "--proj_mode=radial",
        "--proj_freq=1",
        "--grid=dist.inner:4",
        f"--workdir={workdir}",
    ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=command_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed_in, output = None, []
    for line in process.stdout:
        output.append(line)
        if line.startswith("trial 2/2: "):
            killed_in = line.split(": ", 1)[1].strip()
        elif killed_in and line.startswith("epoch 1:"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(output)[-3000:]
    result = subprocess.run(
        command, cwd=ROOT, env=command_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = workdir / "trials"
    sessions = {
        name: [s["epochs"] for s in json.loads((trials / name / "sessions.json").read_text())]
        for name in os.listdir(trials)
    }
    assert sessions == {"baseline_seed0": [2], killed_in: [1, 1]}, sessions
    lines = result.stdout.splitlines()
    start = next(i for i, t in enumerate(lines) if t.startswith("trial") and killed_in in t)
    again = "\n".join(lines[start:])
    assert "\nepoch 2:" in again and "\nepoch 1:" not in again
    summary = json.loads((trials / killed_in / "summary.json").read_text())
    assert summary["epochs_this_session"] == 1 and summary["sessions"] == 2
