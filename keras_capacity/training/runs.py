"""Run directories: which run a folder holds, how far it got, atomic writes.

A run directory holds ``flags.txt``, a flag file that reproduces the run
(``train_main.py --flagfile=RUN/flags.txt --logdir=RUN``). Opening a
directory (`open_run`) for a `RunConfig` tells how far the run
got there:

* ``"new"``: nothing there yet, or a ``flags.txt`` from a command that
  stopped before training started (no initial model, no backup): that
  directory is reclaimed, whatever its flags were;
* ``"resume"``: training started (``model_init.keras`` or ``backup/``);
* ``"trained"``: ``model_final.keras`` was written, the summary was not;
* ``"complete"``: ``summary.json`` is there.

A directory whose training started under other flags is refused with the
differences listed. Damaged files end in one `RunError` line that
names the file and says what to do.
"""

import contextlib
import json
import os
import time

from keras_capacity.training.config import ConfigError, RunConfig

FLAGS_FILE = "flags.txt"
SUMMARY_FILE = "summary.json"
SESSIONS_FILE = "sessions.json"
INITIAL_MODEL = "model_init.keras"
FINAL_MODEL = "model_final.keras"
BACKUP_DIR = "backup"
REPORT_FILE = "report.md"


class RunError(RuntimeError):
    """A run cannot go on; the message says why and what to do, in one line."""


def write_atomic(path, text):
    """Writes ``text`` to ``path`` through a temporary file and a rename, so
    ``path`` holds the old text or the new, whole; an error on the way
    removes the temporary file (a killed process leaves it, named
    ``<path>.partial<pid>``, which no reader takes for the result)."""
    temporary = f"{path}.partial{os.getpid()}"
    try:
        with open(temporary, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_json(path, value):
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json(path, what):
    """The JSON in ``path``; a `RunError` naming ``what`` it holds
    if it is missing or damaged."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path} is missing ({what}).") from None
    except (OSError, ValueError) as error:
        raise RunError(f"{path} is damaged ({what}; {type(error).__name__}: {error}).") from None


def check_writable(run_dir):
    """Creates ``run_dir`` if needed; a `RunError` if it cannot be
    written (each process probes with its own file name)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write_test{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise RunError(
            f"--logdir={run_dir!r} is not writable: {error.strerror or error}."
        ) from None


def flag_file_text(config):
    """``--name=value`` lines of ``config``, sorted by name."""
    values = config.flag_values()
    return "".join(f"--{name}={values[name]}\n" for name in sorted(values))


def parse_flag_file(text):
    """``{name: value text}`` of a flag file written by `flag_file_text`."""
    values = {}
    for line in text.splitlines():
        if line.startswith("--") and "=" in line:
            name, value = line[2:].split("=", 1)
            values[name] = value
    return values


def saved_config(run_dir):
    """The `RunConfig` of ``run_dir/flags.txt``, or ``None``."""
    path = os.path.join(run_dir, FLAGS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return RunConfig.from_flag_values(parse_flag_file(f.read()))
    except (OSError, ConfigError) as error:
        raise RunError(f"{path} is damaged ({error}); it should list the run's flags.") from None


def training_started(run_dir):
    """Whether a run began training in ``run_dir`` (its initial model or a
    backup exists)."""
    return any(os.path.exists(os.path.join(run_dir, name)) for name in (INITIAL_MODEL, BACKUP_DIR))


def open_run(run_dir, config):
    """Makes ``run_dir`` the directory of the run ``config``; returns its
    state (``"new"``, ``"resume"``, ``"trained"`` or ``"complete"``, see the
    module docstring). Raises `RunError` for a directory that holds
    another run, or a damaged ``flags.txt`` or ``summary.json``."""
    check_writable(run_dir)
    saved = saved_config(run_dir)
    if saved is not None and saved != config and training_started(run_dir):
        raise RunError(
            f"{run_dir!r} holds a run with other flags; use another --logdir or the same "
            "flags. Differences (saved -> now):\n  " + "\n  ".join(saved.differences(config))
        )
    if saved is None or saved != config:
        write_atomic(os.path.join(run_dir, FLAGS_FILE), flag_file_text(config))
        return "new" if not training_started(run_dir) else "resume"
    summary = os.path.join(run_dir, SUMMARY_FILE)
    if os.path.exists(summary):
        read_summary(run_dir)
        return "complete"
    if os.path.exists(os.path.join(run_dir, FINAL_MODEL)):
        return "trained"
    return "resume" if training_started(run_dir) else "new"


def read_summary(run_dir):
    """The run's ``summary.json``; a `RunError` that says what to do
    when it is damaged."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        raise RunError(
            f"{path} is missing: the run in {run_dir} has not finished; run train_main.py "
            f"with its flags (--flagfile={os.path.join(run_dir, FLAGS_FILE)}) to finish it."
        )
    try:
        return read_json(path, "the run's final metrics")
    except RunError as error:
        final = os.path.join(run_dir, FINAL_MODEL)
        again = (
            f"recompute it from {final}"
            if os.path.exists(final)
            else f"train the run again ({final} is missing too)"
        )
        raise RunError(f"{error} Delete it and run the same command again to {again}.") from None


def write_summary(run_dir, summary):
    write_json(os.path.join(run_dir, SUMMARY_FILE), summary)


class SessionLog:
    """``sessions.json``: the epochs and training time of every session of a
    run (a session is one process that trained it), so a resumed run
    reports its whole training time and throughput."""

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, SESSIONS_FILE)
        self.sessions = (
            read_json(self.path, "the run's training sessions") if os.path.exists(self.path) else []
        )
        self.current = None

    def start(self):
        self.current = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "epochs": 0,
            "train_time_s": 0.0,
        }
        self.sessions.append(self.current)

    def record_epoch(self, seconds):
        self.current["epochs"] += 1
        self.current["train_time_s"] += seconds
        write_json(self.path, self.sessions)

    def totals(self, num_train):
        """``{"sessions", "epochs", "train_time_s", "images_per_s"}`` over
        the sessions that trained at least one epoch."""
        trained = [s for s in self.sessions if s["epochs"] > 0]
        epochs = sum(s["epochs"] for s in trained)
        seconds = sum(s["train_time_s"] for s in trained)
        return {
            "sessions": len(trained),
            "epochs": epochs,
            "train_time_s": seconds,
            "images_per_s": num_train * epochs / seconds if seconds > 0 else 0.0,
        }
