"""The training program's absl flags, one per `RunConfig` field.

`define_flags` defines them (with the config's defaults) on a
``FlagValues``; `config_from_flags` turns the parsed values into a
validated `RunConfig`. ``train_main.py`` and the sweep share them.
Range checks live in the config, not here, so that every way of making a
run (flags, ``flags.txt``, Python) is checked alike.
"""

from absl import flags

from keras_capacity.training import config as run_config
from keras_capacity.training import dataset_sources

_HELP = {
    "dataset": "Dataset: shapes10 (bundled, no download), cifar10, cifar100 (prepare them once "
    "with keras-capacity-data), tiny_imagenet, tfds:NAME (any TFDS image-classification "
    "dataset prepared in --data_dir, e.g. tfds:mnist), a folder with train/<class>/ and "
    "test/<class>/ image folders, or an .npz file with x_train, y_train, x_test, y_test.",
    "data_dir": "TFDS data directory (cifar10/100, tfds:NAME), or the tiny-imagenet-200 folder.",
    "arch": "Architecture.",
    "n_channels": "Channels of every layer of simple_convnet6/11.",
    "simplex": "simple_convnet6/11: flatten + SimplexClassifier (if the classifier's dist is 0) "
    "or constrained Dense, instead of the 1x1 conv head.",
    "lip": "Lipschitz bounds (> 0): first conv, convs in blocks, shortcut, classifier; -1 or "
    "inf = none.",
    "dist": "(2,1) distance-to-init bounds (>= 0), same four entries; -1 or inf = none; a "
    "classifier entry of 0 selects the SimplexClassifier.",
    "proj_mode": "Projection onto the Lipschitz ball: orthogonal (the nearest kernel, "
    "per-frequency SVD clipping and Dykstra) or radial (rescaling; cheaper).",
    "n_proj": "Alternating projection rounds per projection; 0 = train without projections "
    "(the bounds are then only reported).",
    "proj_freq": "Project every proj_freq optimizer steps.",
    "bs": "Global batch size (over all replicas).",
    "epochs": "Training epochs.",
    "lr": "Learning rate (> 0).",
    "wd": "Weight decay, coupled as PyTorch's (sgd, lars); adam and lamb use none, as the "
    "reference.",
    "momentum": "Momentum (sgd, lars), in [0, 1).",
    "optimizer": "Optimizer.",
    "schedule": "Learning-rate schedule per epoch; auto = cosine for the convnets, step (x gamma "
    "at the milestones) for the ResNet.",
    "milestones": "Epochs of the step schedule (increasing).",
    "gamma": "Factor of the step schedule (> 0).",
    "bn": "BatchNorm in the ResNet.",
    "rand": "Random training labels (drawn with --seed).",
    "limit_to": "Train on the first N samples; -1 = all.",
    "augment": "Random 4-pixel-padded crops and horizontal flips.",
    "seed": "Seed of initialization, shuffling and random labels (>= 0).",
    "save_model": "Also save the model every 10 epochs.",
    "strategy": "auto: MirroredStrategy over all GPUs if there is one, else the default "
    "strategy; multi_worker: MultiWorkerMirroredStrategy from TF_CONFIG.",
    "cpu_devices": "Split the CPU into this many logical devices (to try multi-device "
    "strategies without GPUs).",
    "histogram_every": "Epochs between margin histograms.",
}


def define_flags(flag_values=flags.FLAGS):
    """Defines one flag per `RunConfig` field, plus ``--logdir``."""
    defaults = run_config.RunConfig()
    for name, value in defaults.flag_values().items():
        default = getattr(defaults, name)
        common = dict(help=_HELP[name], flag_values=flag_values)
        if name in run_config.CHOICES:
            flags.DEFINE_enum(name, default, run_config.CHOICES[name], **common)
        elif isinstance(default, bool):
            flags.DEFINE_bool(name, default, **common)
        elif isinstance(default, tuple):
            flags.DEFINE_list(name, value.split(",") if value else [], **common)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, **common)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, **common)
        else:
            flags.DEFINE_string(name, default, **common)
    flags.DEFINE_string(
        "logdir", None, "Run directory; default runs/<dataset>_<arch>.", flag_values=flag_values
    )


def config_from_flags(flag_values=flags.FLAGS):
    """The validated `RunConfig` of the parsed flags (a
    `ConfigError` names a bad one)."""
    names = run_config.RunConfig().flag_values()
    return run_config.RunConfig(**{name: flag_values[name].value for name in names})


def run_directory(config, flag_values=flags.FLAGS):
    """``--logdir``, or ``runs/<dataset>_<arch>`` (a path's last component,
    ``tfds_NAME`` for ``tfds:NAME``)."""
    name = dataset_sources.short_name(config.dataset)
    return flag_values["logdir"].value or f"runs/{name}_{config.arch}"
