"""The sweep command: ``python -m keras_capacity.sweep`` / ``keras-capacity-sweep``.

The base flags are those of ``train_main.py`` (a flag file works as there);
the sweep adds ``--grid`` (repeatable), ``--search`` and ``--resolution``
(a bisection or a frontier instead of the whole grid,
`keras_capacity.sweep.search`), ``--seeds``, ``--tolerance`` and
``--workdir``. The work directory keeps ``sweep.flags``, the sweep's
definition: the same directory with another definition is refused with the
differences listed, and the same command run again finishes what is left.
"""

import os
import sys

from absl import app, flags

from keras_capacity.training import flags as run_flags

SWEEP_FLAGS_FILE = "sweep.flags"


def define_flags(flag_values=flags.FLAGS):
    run_flags.define_flags(flag_values)
    flags.DEFINE_multi_string(
        "grid",
        [],
        "NAME:V1,V2,... (repeatable; several form their product): NAME is a "
        "constraint entry (lip.first, lip.inner, lip.shortcut, lip.classifier, dist.first, ...) "
        "whose values replace it (inf: none), or lip / dist, whose values scale all four "
        "entries of that kind.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "search",
        "grid",
        ["grid", "bisect", "frontier"],
        "grid: train every point of the --grid axes. bisect: one axis given as a bracket "
        "NAME:LOOSE,TIGHT; train the baseline and both ends, then bisect on a log scale until "
        "the tightest value within the tolerance and the loosest over it are less than a "
        "factor --resolution apart (with k workers, k values per round). frontier: two axes, "
        "the rows NAME:V1,V2,... and a bracket NAME:LOOSE,TIGHT bisected for each row.",
        flag_values=flag_values,
    )
    flags.DEFINE_float(
        "resolution",
        None,
        "--search=bisect/frontier: the factor (> 1) between the tightest value within the "
        "tolerance and the loosest over it at which the search stops; default 1.25.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "seeds", 1, "Seeds per grid point (--seed, --seed + 1, ...).", flag_values=flag_values
    )
    flags.DEFINE_float(
        "tolerance",
        None,
        "Test error above the baseline's that still counts "
        "as not increased; default: one standard error of the baseline's.",
        flag_values=flag_values,
    )
    flags.DEFINE_string("workdir", None, "The sweep's work directory.", flag_values=flag_values)


def definition(config, grid_specs, seeds, search=None):
    """What defines a sweep: the base flags, the grid and the seeds, and a
    search with its resolution (they decide which trials there can be; the
    tolerance only changes the analysis, and a search's next choices, which
    read the finished trials afresh each time)."""
    values = {"base": config.flag_values(), "grid": list(grid_specs), "seeds": seeds}
    if search is not None and search.adaptive:
        values.update(search=search.kind, resolution=search.resolution)
    return values


def definition_text(values):
    lines = [f"--{name}={text}" for name, text in sorted(values["base"].items())]
    lines += [f"--grid={spec}" for spec in values["grid"]] + [f"--seeds={values['seeds']}"]
    if "search" in values:
        lines += [f"--search={values['search']}", f"--resolution={values['resolution']!r}"]
    return "\n".join(lines) + "\n"


def claim(workdir, values):
    """Keeps the sweep's definition in ``workdir``; a
    `RunError` listing the differences
    if it already holds another sweep."""
    from keras_capacity.training import runs

    runs.check_writable(workdir)
    path = os.path.join(workdir, SWEEP_FLAGS_FILE)
    text = definition_text(values)
    if os.path.exists(path):
        with open(path) as f:
            saved = f.read()
        if saved != text:
            old, new = set(saved.splitlines()), set(text.splitlines())
            changes = [f"- {line}" for line in sorted(old - new)]
            changes += [f"+ {line}" for line in sorted(new - old)]
            raise runs.RunError(
                f"{workdir!r} holds another sweep; use another --workdir or the same flags. "
                "Differences (- saved, + now):\n  " + "\n  ".join(changes)
            )
        return
    runs.write_atomic(path, text)


def _main(argv):
    from keras_capacity._startup import quiet_tensorflow
    from keras_capacity.sweep import engine, grid
    from keras_capacity.sweep import search as searches
    from keras_capacity.training.cli import fail
    from keras_capacity.training.config import ConfigError
    from keras_capacity.training.runs import RunError

    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    quiet_tensorflow()
    FLAGS = flags.FLAGS
    try:
        if not FLAGS.workdir:
            raise ConfigError(
                "--workdir is required: the folder of the sweep's trials and results."
            )
        if FLAGS.logdir:
            raise ConfigError("--logdir names one run; a sweep's runs go under --workdir.")
        if FLAGS.tolerance is not None and not FLAGS.tolerance >= 0:
            raise ConfigError(f"--tolerance must be >= 0, got {FLAGS.tolerance}.")
        config = run_flags.config_from_flags(FLAGS)
        grid.check_seeds(FLAGS.seeds)
        found = searches.make(config, FLAGS.grid, FLAGS.seeds, FLAGS.search, FLAGS.resolution)
        values = definition(config, FLAGS.grid, FLAGS.seeds, found)
        claim(FLAGS.workdir, values)
        sweep = engine.Sweep(
            FLAGS.workdir,
            values,
            found.axes,
            found.trials,
            FLAGS.tolerance,
            log=lambda line: print(line, flush=True),
            search=found,
        )
        print(f"sweep in {FLAGS.workdir}: {found.describe()}", flush=True)
        summary = engine.search(sweep)
    except (ConfigError, RunError, grid.GridError) as error:
        fail(error)
    if engine.is_chief():
        print(describe(summary, found.axes, FLAGS.workdir), flush=True)


def describe(summary, axes, workdir):
    """The lines a sweep ends with: one per axis (per row of a frontier),
    or the one line that says why there is no estimate at all (and what to
    change)."""
    from keras_capacity.sweep import results
    from keras_capacity.sweep import search as searches

    if summary.get("search"):
        lines = searches.end_lines(summary, axes)
    elif summary["no_estimate"]:
        lines = [f"no estimate: {summary['no_estimate']}"]
    else:
        lines = [results.axis_line(axis, summary["excess_capacity"][axis.name]) for axis in axes]
    if summary["failed"]:
        lines.append(f"failed trials: {', '.join(summary['failed'])}")
    lines.append(f"results in {os.path.join(workdir, 'sweep.md')}")
    return "\n".join(lines)


def main():
    """``python -m keras_capacity.sweep`` / ``keras-capacity-sweep``; a
    flag absl refuses is one ``error:`` line (exit 2), as in the training
    program."""
    from keras_capacity.training.cli import parse_flags

    define_flags()
    app.run(_main, flags_parser=parse_flags)


if __name__ == "__main__":
    sys.exit(main())
