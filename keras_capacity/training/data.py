"""Input pipelines: the bundled offline dataset, CIFAR-10/100 (TFDS),
Tiny-ImageNet-200 (its standard folder layout), and any other image
dataset: ``tfds:NAME``, a folder of class subfolders or an ``.npz`` file
(`keras_capacity.training.dataset_sources`).

Training never downloads: CIFAR is prepared once, on a machine with
internet, by ``keras-capacity-data prepare cifar10 --data_dir=DIR`` (or
``python -m keras_capacity.training.data prepare ...``, or TFDS's own
``tfds build cifar10 --data_dir=DIR``), and training then reads
``--data_dir=DIR``. Data that is not there is a `DataNotFound` that
says where it was looked for and how to get it.

`load` returns normalized ``tf.data`` pipelines that cache the decoded
images, shuffle, batch and prefetch, so an accelerator is not left waiting.
Inputs are normalized per channel with the statistics of SPEC §5 (the
other datasets: those of their training split, computed when loading),
once, before the cache: normalizing every batch of cached 8-bit images instead
measured four times slower per batch on 2 CPU cores (1.8 against 0.45 ms
for 128 CIFAR-sized images), more than shuffling float32 costs. There is
no augmentation unless asked for (random 4-pixel-padded crops and flips).
"""

import argparse
import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf

from keras_capacity.training import dataset_sources
from keras_capacity.training.dataset_sources import DataNotFound

DATASETS = ("shapes10", "cifar10", "cifar100", "tiny_imagenet")

# Per-channel (mean, std) of the training images, in [0, 1].
STATISTICS = {
    "shapes10": ((0.3222, 0.3252, 0.3228), (0.2111, 0.2103, 0.2111)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

SHAPES10_PATH = os.path.join(os.path.dirname(__file__), "datasets", "shapes10.npz")

TINY_IMAGENET_LAYOUT = """\
tiny-imagenet-200/
  wnids.txt                      (optional: one class id per line)
  train/<wnid>/images/*.JPEG     (one folder per class)
  val/images/*.JPEG
  val/val_annotations.txt        (file name <TAB> wnid <TAB> box...)
Get it from http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it
into --data_dir (the folder above, or its parent)."""


def prepare_command(name, data_dir):
    """The command that prepares TFDS dataset ``name`` into ``data_dir``."""
    return f"keras-capacity-data prepare {name} --data_dir={data_dir}"


@dataclasses.dataclass
class Data:
    """What `load` returns."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    num_train: int
    num_test: int
    image_shape: tuple
    # Per-channel (mean, std) the images were normalized with, in [0, 1]
    # for 8-bit images.
    statistics: tuple = None


def _shapes10():
    with np.load(SHAPES10_PATH) as arrays:
        train = (arrays["x_train"], arrays["y_train"].astype(np.int64))
        test = (arrays["x_test"], arrays["y_test"].astype(np.int64))
    return (
        tf.data.Dataset.from_tensor_slices(train),
        tf.data.Dataset.from_tensor_slices(test),
        10,
        len(train[1]),
        len(test[1]),
    )


def _tfds(name, data_dir):
    import tensorflow_datasets as tfds

    where = data_dir or tfds.core.constants.DATA_DIR
    how = (
        f"On a machine with internet run once `{prepare_command(name, where)}` (or `tfds "
        f"build {name} --data_dir={where}`), then train with --data_dir={where}."
    )
    try:
        splits, info = tfds.load(
            name,
            split=["train", "test"],
            data_dir=data_dir,
            as_supervised=True,
            shuffle_files=False,
            with_info=True,
            download=False,
        )
    except AssertionError:  # TFDS's "could not find data"
        raise DataNotFound(f"{name} is not prepared in {where}. {how}") from None
    except Exception as error:  # a damaged or foreign folder
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataNotFound(
            f"{where} does not hold a readable {name} ({type(error).__name__}: {first}). {how}"
        ) from None
    num_classes = info.features["label"].num_classes
    counts = []
    for name_, split in zip(("train", "test"), splits, strict=True):
        try:
            counts.append(info.splits[name_].num_examples)
        except KeyError:  # split sizes unknown (mock data): count once
            counts.append(int(split.reduce(0, lambda n, _: n + 1)))
    return splits[0], splits[1], num_classes, counts[0], counts[1]


def _tiny_imagenet_root(data_dir):
    if not data_dir:
        raise FileNotFoundError(
            "--data_dir is required for tiny_imagenet.\n" + TINY_IMAGENET_LAYOUT
        )
    for root in (data_dir, os.path.join(data_dir, "tiny-imagenet-200")):
        if os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "val")):
            return root
    raise FileNotFoundError(
        f"No Tiny-ImageNet-200 under {data_dir!r}: expected train/ and val/.\n"
        + TINY_IMAGENET_LAYOUT
    )


def tiny_imagenet_files(data_dir):
    """``(train files, train labels, val files, val labels, class ids)``
    from the standard Tiny-ImageNet-200 layout; ``FileNotFoundError`` or
    ``ValueError`` with the expected layout when it does not match."""
    root = _tiny_imagenet_root(data_dir)
    train_dir = os.path.join(root, "train")
    wnids_file = os.path.join(root, "wnids.txt")
    if os.path.exists(wnids_file):
        with open(wnids_file) as f:
            wnids = [line.strip() for line in f if line.strip()]
    else:
        wnids = sorted(
            d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d))
        )
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        images = os.path.join(train_dir, wnid, "images")
        if not os.path.isdir(images):
            raise FileNotFoundError(f"Missing {images}.\n" + TINY_IMAGENET_LAYOUT)
        names = sorted(n for n in os.listdir(images) if n.lower().endswith((".jpeg", ".jpg")))
        train_files += [os.path.join(images, n) for n in names]
        train_labels += [index[wnid]] * len(names)
    annotations = os.path.join(root, "val", "val_annotations.txt")
    if not os.path.exists(annotations):
        raise FileNotFoundError(f"Missing {annotations}.\n" + TINY_IMAGENET_LAYOUT)
    val_files, val_labels = [], []
    with open(annotations) as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise ValueError(
                    f"{annotations}, line {number}: expected 'file<TAB>wnid...' with a "
                    f"known wnid, got {line.strip()!r}.\n" + TINY_IMAGENET_LAYOUT
                )
            val_files.append(os.path.join(root, "val", "images", fields[0]))
            val_labels.append(index[fields[1]])
    if not train_files or not val_files:
        raise ValueError(f"No images found under {root!r}.\n" + TINY_IMAGENET_LAYOUT)
    return train_files, train_labels, val_files, val_labels, wnids


def _decoded(files, labels):
    def decode(path, label):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize_with_crop_or_pad(image, 64, 64), label

    dataset = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int64)))
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _tiny_imagenet(data_dir):
    train_files, train_labels, val_files, val_labels, wnids = tiny_imagenet_files(data_dir)
    return (
        _decoded(train_files, train_labels),
        _decoded(val_files, val_labels),
        len(wnids),
        len(train_files),
        len(val_files),
    )


def random_labels(count, num_classes, seed):
    """Uniformly random labels, the same for the same ``seed``."""
    return np.random.default_rng(seed).integers(0, num_classes, size=count)


def _normalizer(mean, std, divisor=255.0):
    mean64, std64 = (tf.constant(v, tf.float64) for v in (mean, std))
    mean, std = (tf.constant(v, tf.float32) for v in (mean, std))

    def normalize(image, label):
        if image.dtype == tf.float64:  # centred before float32 rounds it
            return tf.cast((image / divisor - mean64) / std64, tf.float32), tf.cast(label, tf.int64)
        return (tf.cast(image, tf.float32) / divisor - mean) / std, tf.cast(label, tf.int64)

    return normalize


def _augment(image, label):
    height, width = image.shape[0], image.shape[1]
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
    image = tf.image.random_crop(padded, (height, width, image.shape[2]))
    return tf.image.random_flip_left_right(image), label


def source(name):
    """The `Source` of
    ``--dataset=name``: a ``ValueError`` (an ``UnknownDataset`` for a bare
    unknown name) unless it is one of `DATASETS`, ``tfds:NAME``, an
    existing folder or an existing ``.npz`` file."""
    return dataset_sources.parse(name, DATASETS)


def _named(name, data_dir):
    """``(train, test, num_classes, num_train, num_test)`` of one of
    `DATASETS`."""
    if name == "shapes10":
        return _shapes10()
    if name == "tiny_imagenet":
        return _tiny_imagenet(data_dir)
    return _tfds(name, data_dir or None)


# What --inputs of the report can ask for: the training program's per-channel
# standardization, or the images divided by 255 (8-bit images), or as stored.
INPUTS = ("standardized", "unit", "raw")


def load(
    name,
    data_dir=None,
    batch_size=256,
    limit_to=-1,
    randomize_labels=False,
    augment=False,
    seed=0,
    inputs="standardized",
):
    """Normalized, batched train and test pipelines for dataset ``name``.

    Args:
        name: one of `DATASETS` (``shapes10`` is bundled and needs no
            download), ``tfds:NAME`` (any TFDS image-classification dataset
            prepared in ``data_dir``), a folder with ``train/<class>/`` and
            ``test/<class>/`` image folders, or an ``.npz`` file with
            ``x_train``, ``y_train``, ``x_test``, ``y_test``. The named
            datasets are normalized with their published statistics, the
            others with those of their whole training split (not only the
            ``limit_to`` first examples).
        data_dir: TFDS data directory, or the Tiny-ImageNet folder.
        batch_size: the global batch size.
        limit_to: train on the first ``limit_to`` examples (``-1``: all).
        randomize_labels: replace the training labels by random ones drawn
            with ``seed`` (the same on every run and resume).
        augment: random 4-pixel-padded crops and horizontal flips.
        seed: seeds the shuffling and the random labels.
        inputs: ``standardized`` (per channel, as training feeds a model),
            ``unit`` (8-bit images divided by 255) or ``raw`` (as stored):
            what a model trained elsewhere expects.

    Returns:
        A `Data`.
    """
    if inputs not in INPUTS:
        raise ValueError(f"inputs={inputs!r}: expected one of {INPUTS}.")
    found = source(name)
    if found.kind == dataset_sources.NAMED:
        train, test, num_classes, num_train, num_test = _named(name, data_dir)
        statistics, divisor = STATISTICS[name], 255.0
    else:
        raw = dataset_sources.read(found, data_dir or None)
        train, test, num_classes = raw.train, raw.test, raw.num_classes
        num_train, num_test = raw.num_train, raw.num_test
        statistics, divisor = (raw.mean, raw.std), raw.divisor
    if limit_to is not None and limit_to > 0:
        train, num_train = train.take(limit_to), min(limit_to, num_train)
    if randomize_labels:
        labels = tf.constant(random_labels(num_train, num_classes, seed), tf.int64)
        train = train.enumerate().map(lambda i, example: (example[0], tf.gather(labels, i)))
    if inputs != "standardized":
        channels = len(statistics[0])
        statistics = ((0.0,) * channels, (1.0,) * channels)
        divisor = divisor if inputs == "unit" else 1.0
    normalize = _normalizer(*statistics, divisor)
    train = train.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).cache()
    test = test.map(normalize, num_parallel_calls=tf.data.AUTOTUNE).cache()
    train = train.shuffle(min(num_train, 50_000), seed=seed, reshuffle_each_iteration=True)
    if augment:
        train = train.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    image_shape = tuple(train.element_spec[0].shape)
    return Data(
        train=train.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        test=test.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        num_classes=num_classes,
        num_train=num_train,
        num_test=num_test,
        image_shape=image_shape,
        statistics=statistics,
    )


def prepare(name, data_dir):
    """Downloads and prepares TFDS dataset ``name`` (cifar10, cifar100) in
    ``data_dir``, once, where there is internet."""
    import tensorflow_datasets as tfds

    if name not in ("cifar10", "cifar100"):
        raise ValueError(
            f"only cifar10 and cifar100 are prepared through TFDS; {name!r} is "
            "bundled (shapes10) or read from its folder (tiny_imagenet)."
        )
    tfds.builder(name, data_dir=data_dir).download_and_prepare()


def main(argv=None):
    """``keras-capacity-data prepare NAME --data_dir=DIR``."""
    parser = argparse.ArgumentParser(
        prog="keras-capacity-data",
        description="Prepare a TFDS dataset once, on a machine with internet, for training "
        "with --data_dir.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("prepare", help="download and prepare a dataset")
    command.add_argument("name", choices=("cifar10", "cifar100"))
    command.add_argument("--data_dir", required=True, help="where TFDS keeps it")
    arguments = parser.parse_args(argv)
    try:
        prepare(arguments.name, arguments.data_dir)
    except Exception as error:  # a download that fails: one line
        print(
            f"error: preparing {arguments.name} in {arguments.data_dir} failed "
            f"({type(error).__name__}: {str(error).strip().splitlines()[0]})",
            file=sys.stderr,
        )
        return 1
    print(
        f"{arguments.name} is ready in {arguments.data_dir}; train with "
        f"--dataset={arguments.name} --data_dir={arguments.data_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
