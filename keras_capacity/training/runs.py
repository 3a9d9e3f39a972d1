"""Run directories: the resolved flag file, resuming, atomic writes.

A run directory holds ``flags.txt``, a flag file that reproduces the run
(``python train_main.py --flagfile=RUN/flags.txt``). Starting a run in a
directory that already has one resumes it if the flags are the same, and is
refused with the differences listed otherwise.
"""

import json
import os

FLAGS_FILE = "flags.txt"
SUMMARY_FILE = "summary.json"


class RunMismatch(ValueError):
    """The run directory belongs to a run with other flags."""


def format_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    return "" if value is None else str(value)


def flag_file_text(values):
    """``--name=value`` lines, sorted by name."""
    return "".join(f"--{name}={format_value(values[name])}\n" for name in sorted(values))


def parse_flag_file(text):
    """``{name: value text}`` of a flag file written by :func:`flag_file_text`."""
    values = {}
    for line in text.splitlines():
        if line.startswith("--") and "=" in line:
            name, value = line[2:].split("=", 1)
            values[name] = value
    return values


def write_atomic(path, text):
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    temporary = path + ".partial"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


def check_writable(run_dir):
    """Creates ``run_dir`` if needed; ``PermissionError``/``OSError`` with a
    clear message if it cannot be written."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write_test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise OSError(f"--logdir={run_dir!r} is not writable: {error.strerror or error}.") from None


def existing_flags(run_dir):
    path = os.path.join(run_dir, FLAGS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return parse_flag_file(f.read())


def differences(saved, values):
    """``["name: saved -> now", ...]`` where ``values`` differs from the saved flag file."""
    now = {name: format_value(value) for name, value in values.items()}
    return [
        f"--{name}: {saved.get(name, '(absent)')!s} -> {now.get(name, '(absent)')!s}"
        for name in sorted(set(saved) | set(now))
        if saved.get(name) != now.get(name)
    ]


def claim(run_dir, values):
    """Makes ``run_dir`` the directory of the run with flags ``values``.

    Returns ``"new"``, ``"resume"`` (same flags, not finished) or
    ``"complete"`` (same flags, ``summary.json`` written). Raises
    :class:`RunMismatch` naming every differing flag.
    """
    saved = existing_flags(run_dir)
    if saved is not None:
        changed = differences(saved, values)
        if changed:
            raise RunMismatch(
                f"{run_dir!r} holds a run with other flags; use another --logdir or "
                "the same flags. Differences (saved -> now):\n  " + "\n  ".join(changed)
            )
        if os.path.exists(os.path.join(run_dir, SUMMARY_FILE)):
            return "complete"
        return "resume"
    write_atomic(os.path.join(run_dir, FLAGS_FILE), flag_file_text(values))
    return "new"


def write_summary(run_dir, summary):
    write_atomic(os.path.join(run_dir, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir):
    with open(os.path.join(run_dir, SUMMARY_FILE)) as f:
        return json.load(f)
