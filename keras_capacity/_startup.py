"""How the package's commands start: TensorFlow without its start-up noise,
and its Python loggers kept to errors (`quiet_tensorflow`).

Importing TensorFlow writes several C++ log lines (oneDNN, CUDA probing on
CPU machines, ...) that ``TF_CPP_MIN_LOG_LEVEL`` no longer reaches (they are
written before TensorFlow sets up its logging). The package's commands
(``train_main.py``, ``keras-capacity-*``, ``python -m keras_capacity...``)
import TensorFlow with standard error closed for that moment, unless the
user chose a level; importing the library in one's own program changes
nothing. Standard library only at import: this runs before Keras is imported.
"""

import importlib.util
import os
import sys

COMMANDS = ("train_main.py",)
COMMAND_PREFIX = "keras-capacity-"


def started_as_command():
    """Whether this process is one of the package's commands."""
    program = os.path.basename((getattr(sys, "argv", None) or [""])[0])
    if program in COMMANDS or program.startswith(COMMAND_PREFIX):
        return True
    arguments = list(getattr(sys, "orig_argv", []))
    return "-m" in arguments[:-1] and arguments[arguments.index("-m") + 1].startswith(
        "keras_capacity"
    )


def import_tensorflow_quietly():
    """Imports TensorFlow with standard error closed during the import, and
    its later C++ logging limited to fatal errors, unless
    ``TF_CPP_MIN_LOG_LEVEL`` is set. Python errors still raise."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    if importlib.util.find_spec("tensorflow") is None:  # a JAX-only installation
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow():
    """Keeps TensorFlow's and absl's Python loggers to errors (their lines
    about collectives, deprecations and TFDS folders say nothing to a user);
    for the commands, once they run."""
    import logging

    from absl import logging as absl_logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
