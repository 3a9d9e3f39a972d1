"""The training program's commands: flags in, one call, one-line errors out.

``train_main.py`` and the installed ``keras-capacity-train`` command run
`train`: absl parses the flags, `keras_capacity.training.train_and_evaluate`
does the work, and a bad setting or a run that cannot go on ends the
program with ``error: <what and what to do>`` (exit status 2), not a
traceback or the whole ``--help`` text.
"""

import re
import sys

from absl import app, flags

from keras_capacity._startup import quiet_tensorflow
from keras_capacity.training import flags as run_flags
from keras_capacity.training.config import ConfigError
from keras_capacity.training.runs import RunError


def fail(error):
    """Ends the program with one line naming the error."""
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def _train_main(argv):
    from keras_capacity.training import train as training

    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every setting is a --flag.")
    quiet_tensorflow()
    try:
        config = run_flags.config_from_flags(flags.FLAGS)
        run_dir = run_flags.run_directory(config, flags.FLAGS)
        summary = training.train_and_evaluate(
            config, run_dir, log=lambda line: print(line, flush=True)
        )
    except (ConfigError, RunError) as error:
        fail(error)
    print(training.describe(summary, run_dir), flush=True)


def parse_flags(argv):
    """absl's flag parsing, with its errors (a value outside a flag's
    choices, a flag file that cannot be read, an unknown flag) in the same
    one line and exit status 2 as every other error, where absl would print
    two lines and exit with 1."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        fail(re.sub(r"^ERROR::\s*", "", " ".join(lines)))


def train():
    """``train_main.py`` / ``keras-capacity-train``."""
    run_flags.define_flags()
    app.run(_train_main, flags_parser=parse_flags)
