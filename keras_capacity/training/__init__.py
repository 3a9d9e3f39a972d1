"""The training program as a library: a run's configuration, training and
evaluation as one function, and what only the program uses (data,
optimizers, run directories, callbacks, the capacity report).

>>> from keras_capacity.training import RunConfig, train_and_evaluate
>>> config = RunConfig(arch="simple_convnet6", n_channels=32, epochs=2,
...                    lip="3,2,-1,2", dist="8,8,-1,4", proj_mode="radial")
>>> summary = train_and_evaluate(config, "runs/example")

The names are imported when first used, so that ``python -m
keras_capacity.training.report`` (or ``.data``) runs its module only once.
"""

import importlib

_EXPORTS = {
    "RunConfig": "config",
    "ConfigError": "config",
    "RunError": "runs",
    "train_and_evaluate": "train",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'keras_capacity.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keras_capacity.training.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
