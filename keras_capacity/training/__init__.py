"""The training program as a library: a run's configuration, training and
evaluation as one function, and what only the program uses (data,
optimizers, run directories, callbacks, the capacity report).

>>> from keras_capacity.training import RunConfig, train_and_evaluate
>>> config = RunConfig(arch="simple_convnet6", n_channels=32, epochs=2,
...                    lip="3,2,-1,2", dist="8,8,-1,4", proj_mode="radial")
>>> summary = train_and_evaluate(config, "runs/example")
"""

from keras_capacity.training.config import ConfigError, RunConfig
from keras_capacity.training.runs import RunError
from keras_capacity.training.train import train_and_evaluate

__all__ = ["RunConfig", "ConfigError", "RunError", "train_and_evaluate"]
