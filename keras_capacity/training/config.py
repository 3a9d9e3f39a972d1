"""What defines a training run: `RunConfig`, validated on construction.

The command line (`keras_capacity.training.flags`), a run directory's
``flags.txt`` and a sweep's trials all produce a ``RunConfig``, and a run is
the same run exactly when its config is equal. Every field is checked when
the config is made, before anything is written, and a bad value is a
`ConfigError` whose one-line message names the flag.
"""

import dataclasses
import math

from keras_capacity import constraint_values, constraints, models
from keras_capacity.training import data, optimizers

SCHEDULES = ("auto", "cosine", "step", "constant")
STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")
# The settings with a fixed set of values (--dataset also takes tfds:NAME
# and paths: _dataset).
CHOICES = {
    "arch": tuple(models.ARCHITECTURES),
    "proj_mode": constraints.MODES,
    "optimizer": optimizers.OPTIMIZERS,
    "schedule": SCHEDULES,
    "strategy": STRATEGIES,
}


class ConfigError(ValueError):
    """A setting of a run is invalid; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The settings of one training run, with the reference's defaults.

    The names are the flags of ``train_main.py`` (the reference's
    ``train.py`` flags, plus ``dataset``, ``simplex``, ``schedule``,
    ``milestones``, ``gamma``, ``augment``, ``seed``, ``strategy``,
    ``cpu_devices`` and ``histogram_every``). ``lip`` and ``dist`` hold four
    bounds (first conv, convs inside blocks, shortcut, classifier) as
    floats, ``inf`` for none; they may be given as lists or comma-separated
    text with ``-1`` for none, as on the command line.

    >>> config = RunConfig(arch="simple_convnet6", n_channels=32, lip="3,2,-1,2")
    >>> config.lip
    (3.0, 2.0, inf, 2.0)
    """

    dataset: str = "shapes10"
    data_dir: str | None = None
    arch: str = "preact_resnet18"
    n_channels: int = 512
    simplex: bool = False
    lip: tuple = (math.inf,) * 4
    dist: tuple = (math.inf,) * 4
    proj_mode: str = "orthogonal"
    n_proj: int = 1
    proj_freq: int = 15
    bs: int = 256
    epochs: int = 100
    lr: float = 0.003
    wd: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    schedule: str = "auto"
    milestones: tuple = (60, 120, 160)
    gamma: float = 0.2
    bn: bool = False
    rand: bool = False
    limit_to: int = -1
    augment: bool = False
    seed: int = 0
    save_model: bool = False
    strategy: str = "auto"
    cpu_devices: int = 1
    histogram_every: int = 10

    def __post_init__(self):
        for name, value in _normalized(self).items():
            object.__setattr__(self, name, value)
        _check_combinations(self)

    @property
    def schedule_kind(self):
        """The schedule ``auto`` stands for: step for the ResNet, cosine else."""
        if self.schedule != "auto":
            return self.schedule
        return "step" if self.arch == "preact_resnet18" else "cosine"

    def replace(self, **changes):
        """A copy with ``changes``, validated again."""
        return dataclasses.replace(self, **changes)

    def flag_values(self):
        """``{flag name: text}``: the command line that gives this config."""
        return {
            field.name: _flag_text(getattr(self, field.name)) for field in dataclasses.fields(self)
        }

    @classmethod
    def from_flag_values(cls, values):
        """The config of ``{flag name: text}`` (a ``flags.txt``); unknown
        names are a `ConfigError`."""
        names = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"Unknown settings {unknown}.")
        return cls(**{name: _from_text(names[name], text) for name, text in values.items()})

    def differences(self, other):
        """``["--name: mine -> other's", ...]`` for every differing setting."""
        mine, theirs = self.flag_values(), other.flag_values()
        return [
            f"--{name}: {mine[name]} -> {theirs[name]}"
            for name in mine
            if getattr(self, name) != getattr(other, name)
        ]


def _flag_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, tuple):
        if all(isinstance(v, float) for v in value):
            return ",".join(constraint_values.format_bound(v) for v in value)
        return ",".join(str(v) for v in value)
    return str(value)


def _from_text(field, text):
    if field.type is bool or isinstance(field.default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"--{field.name} must be true or false, got {text!r}.")
        return text.lower() in ("true", "1")
    if field.name == "data_dir":
        return text or None
    return text


def _integer(config, name, minimum=None, allowed=()):
    value = getattr(config, name)
    try:
        number = int(value)
        exact = not isinstance(value, bool) and float(value) == number
    except (TypeError, ValueError, OverflowError):
        exact = False
    if not exact:
        raise ConfigError(f"--{name} must be an integer, got {value!r}.")
    if number not in allowed and minimum is not None and number < minimum:
        also = f" (or {', '.join(map(str, allowed))})" if allowed else ""
        raise ConfigError(f"--{name} must be >= {minimum}{also}, got {number}.")
    return number


def _real(config, name, minimum, *, strictly=False, below=None):
    value = getattr(config, name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be a number, got {value!r}.") from None
    low_ok = number > minimum if strictly else number >= minimum
    high_ok = below is None or number < below
    if not (math.isfinite(number) and low_ok and high_ok):
        upper = "inf" if below is None else format(below, "g")
        interval = f"{'(' if strictly else '['}{minimum:g}, {upper})"
        raise ConfigError(f"--{name} must be a finite number in {interval}, got {value!r}.")
    return number


def _choice(config, name):
    value, choices = getattr(config, name), CHOICES[name]
    if value not in choices:
        raise ConfigError(
            f"--{name}: unknown value {value!r}; expected one of {', '.join(choices)}."
        )
    return value


def _dataset(config):
    """``--dataset``: a named dataset, ``tfds:NAME``, or a folder or
    ``.npz`` file that exists (its contents are checked when loading)."""
    value = config.dataset
    try:
        data.source(value)
    except data.dataset_sources.UnknownDataset:
        raise ConfigError(
            f"--dataset: unknown value {value!r}; expected {data.dataset_sources.FORMS}."
        ) from None
    except ValueError as error:
        raise ConfigError(f"--dataset: {error}") from None
    return value


def _flag(config, name):
    value = getattr(config, name)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"--{name} must be true or false, got {value!r}.")
    return value


def _bounds(config, name, kind):
    try:
        return constraint_values.constraint_list(f"--{name}", getattr(config, name), kind)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _milestones(config):
    values = config.milestones
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    try:
        milestones = tuple(int(str(v).strip()) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--milestones must be epochs (integers), got {config.milestones!r}."
        ) from None
    increasing = all(b > a for a, b in zip(milestones, milestones[1:], strict=False))
    if any(m < 1 for m in milestones) or not increasing:
        raise ConfigError(
            f"--milestones must be increasing epochs >= 1, got {','.join(map(str, milestones))}."
        )
    return milestones


def _normalized(config):
    """Every field converted to its type and checked, or a ConfigError."""
    return {
        "dataset": _dataset(config),
        "data_dir": None if not config.data_dir else str(config.data_dir),
        "arch": _choice(config, "arch"),
        "n_channels": _integer(config, "n_channels", 1),
        "simplex": _flag(config, "simplex"),
        "lip": _bounds(config, "lip", constraint_values.LIPSCHITZ),
        "dist": _bounds(config, "dist", constraint_values.DISTANCE),
        "proj_mode": _choice(config, "proj_mode"),
        "n_proj": _integer(config, "n_proj", 0),
        "proj_freq": _integer(config, "proj_freq", 1),
        "bs": _integer(config, "bs", 1),
        "epochs": _integer(config, "epochs", 1),
        "lr": _real(config, "lr", 0.0, strictly=True),
        "wd": _real(config, "wd", 0.0),
        "momentum": _real(config, "momentum", 0.0, below=1.0),
        "optimizer": _choice(config, "optimizer"),
        "schedule": _choice(config, "schedule"),
        "milestones": _milestones(config),
        "gamma": _real(config, "gamma", 0.0, strictly=True),
        "bn": _flag(config, "bn"),
        "rand": _flag(config, "rand"),
        "limit_to": _integer(config, "limit_to", 1, allowed=(-1,)),
        "augment": _flag(config, "augment"),
        "seed": _integer(config, "seed", 0),
        "save_model": _flag(config, "save_model"),
        "strategy": _choice(config, "strategy"),
        "cpu_devices": _integer(config, "cpu_devices", 1),
        "histogram_every": _integer(config, "histogram_every", 1),
    }


def _check_combinations(config):
    if config.bn and config.arch != "preact_resnet18":
        raise ConfigError("--bn applies to --arch=preact_resnet18 only.")
    if config.dataset == "tiny_imagenet" and config.arch != "preact_resnet18":
        raise ConfigError(
            "tiny_imagenet has 64x64 images; the simple convnets need 32x32: "
            "use --arch=preact_resnet18."
        )
    if config.seed >= 2**32:
        raise ConfigError(f"--seed must be below 2**32, got {config.seed}.")
