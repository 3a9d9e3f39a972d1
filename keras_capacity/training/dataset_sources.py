"""Datasets beyond the four named ones: any TFDS image-classification
dataset (``tfds:NAME``), a folder of class subfolders, an ``.npz`` file.

`parse` tells which form a ``--dataset`` value has (the run's config
calls it, so a malformed value or a missing path stops the run before
anything is written); `read` returns the raw ``(image, label)``
pipelines of one, its number of classes and the per-channel statistics of
its training images. These datasets come with no published statistics, so
they are computed from the training split in one streaming pass with
float64 sums (`channel_statistics`): no dataset is ever held in
memory as floats, however large.
"""

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

NAMED, TFDS, FOLDER, NPZ = "named", "tfds", "folder", "npz"
TFDS_PREFIX = "tfds:"
# NAME, NAME/CONFIG, NAME:1.2.3 or NAME/CONFIG:1.2.3, as TFDS writes them.
_TFDS_NAME = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9]+\.[0-9]+\.[0-9]+)?")
# What keras.utils.image_dataset_from_directory reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Images per batch of the statistics pass.
STATISTICS_BATCH = 256

FORMS = (
    "shapes10, cifar10, cifar100, tiny_imagenet, tfds:NAME (a TFDS dataset prepared in "
    "--data_dir, e.g. tfds:mnist), a folder with train/ and test/, or an .npz file"
)

FOLDER_LAYOUT = """\
DATASET/                  (--dataset=DATASET)
  train/<class>/<image>   (one folder per class; .png, .jpg, .jpeg, .bmp or .gif)
  test/<class>/<image>    (the same class folders)
Labels follow the sorted class folder names. Images should all have one size:
any other is resized (bilinear) to the size of the first training image."""

NPZ_LAYOUT = """\
An .npz file (numpy.savez) with the arrays
  x_train, x_test   images, uint8 (0..255) or float: (N, H, W, C), or (N, H, W) for grayscale
  y_train, y_test   integer labels 0..K-1: (N,) or (N, 1)
  num_classes       optional: K (default: the largest label + 1)"""


class DataNotFound(FileNotFoundError):
    """A dataset is not where training looks for it; the message says how
    to get it."""


class UnknownDataset(ValueError):
    """A ``--dataset`` value that is none of the accepted forms."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One ``--dataset`` value: its ``kind`` (`NAMED`, `TFDS`,
    `FOLDER` or `NPZ`) and the name or path it names."""

    kind: str
    target: str


@dataclasses.dataclass
class Raw:
    """What `read` returns: unnormalized ``(image, label)`` pipelines
    and what normalizing them needs."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    num_train: int
    num_test: int
    mean: tuple
    std: tuple
    divisor: float  # images are divided by it before (x - mean) / std


def parse(name, named=()):
    """The `Source` of ``--dataset=name``; ``named`` are the
    datasets known by name, which win over a folder of the same name
    (write ``./NAME`` for the folder).

    A bare unknown name is an `UnknownDataset`; a malformed
    ``tfds:`` value or a path that is not there a ``ValueError``.
    """
    if not isinstance(name, str) or not name:
        raise UnknownDataset(f"Unknown dataset {name!r}; expected {FORMS}.")
    if name in named:
        return Source(NAMED, name)
    if name.startswith(TFDS_PREFIX):
        return Source(TFDS, _tfds_name(name))
    if name.lower().endswith(".npz"):
        if not os.path.isfile(name):
            raise ValueError(f"no such .npz file: {name!r}.")
        return Source(NPZ, name)
    if os.path.isdir(name):
        return Source(FOLDER, name)
    if os.path.exists(name):
        raise ValueError(f"{name!r} is neither a folder (train/ and test/) nor an .npz file.")
    if os.sep in name or "/" in name or name.startswith("."):
        raise ValueError(f"no such folder: {name!r} (a folder dataset holds train/ and test/).")
    raise UnknownDataset(f"Unknown dataset {name!r}; expected {FORMS}.")


def _tfds_name(value):
    name = value[len(TFDS_PREFIX) :]
    if not _TFDS_NAME.fullmatch(name):
        raise ValueError(
            f"{value!r} is not tfds:NAME with a TFDS dataset name (tfds:mnist, "
            "tfds:svhn_cropped, tfds:NAME/CONFIG, tfds:NAME:VERSION)."
        )
    return name


def short_name(name):
    """A folder-name-safe name for ``--dataset=name`` (the default run
    directory ``runs/<short name>_<arch>``): the name itself, ``tfds_NAME``,
    or a path's last component without ``.npz``."""
    if name.startswith(TFDS_PREFIX):
        text = "tfds_" + name[len(TFDS_PREFIX) :]
    elif os.sep in name or "/" in name or name.startswith(".") or name.lower().endswith(".npz"):
        text = os.path.basename(os.path.abspath(name))
        if text.lower().endswith(".npz"):
            text = text[: -len(".npz")]
    else:
        text = name
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip(".") or "dataset"


def read(source, data_dir=None):
    """The `Raw` data of a ``tfds:``, folder or ``.npz`` source.

    Raises `DataNotFound` for a TFDS dataset that is not prepared,
    ``ValueError`` (with the expected layout) for data that does not fit.
    """
    if source.kind == TFDS:
        return _tfds(source.target, data_dir)
    if source.kind == FOLDER:
        return _folder(source.target)
    if source.kind == NPZ:
        return _npz(source.target)
    raise ValueError(f"{source.kind} datasets are not read here.")


def _with_statistics(train, test, num_classes, num_test, divisor, num_train=None):
    """The `Raw` of these pipelines, with the training images'
    statistics (and their count, where it was not known)."""
    mean, std, count = channel_statistics(train.map(lambda image, label: image), divisor)
    if num_train is not None and count != num_train:
        raise ValueError(f"expected {num_train} training images, read {count}.")
    if count == 0:
        raise ValueError("the training split holds no images.")
    return Raw(train, test, num_classes, count, num_test, mean, std, divisor)


# ------------------------------------------------------------- statistics


def channel_statistics(images, divisor=1.0):
    """``(mean, std, count)``: the per-channel mean and standard deviation
    of ``images / divisor`` over a dataset of ``(H, W, C)`` images, and the
    number of images, in one pass.

    The sums are float64 and taken around the first image's channel means
    (the shifted-data formula), so the variance does not cancel even for
    images far from 0. A constant channel gets std 1 (it carries nothing;
    normalized, it is 0). A decoding error is a ``ValueError``.
    """
    channels = images.element_spec.shape[-1]
    try:
        shift = _first_means(images, divisor, channels)
        zeros = tf.zeros((channels,), tf.float64)

        def add(totals, batch):
            count, pixels, total, squares = totals
            x = tf.reshape(tf.cast(batch, tf.float64) / divisor, (-1, channels)) - shift
            return (
                count + tf.cast(tf.shape(batch)[0], tf.int64),
                pixels + tf.cast(tf.shape(x)[0], tf.float64),
                total + tf.reduce_sum(x, axis=0),
                squares + tf.reduce_sum(tf.square(x), axis=0),
            )

        batches = images.batch(STATISTICS_BATCH).prefetch(tf.data.AUTOTUNE)
        initial = (tf.constant(0, tf.int64), tf.constant(0.0, tf.float64), zeros, zeros)
        count, pixels, total, squares = (v.numpy() for v in batches.reduce(initial, add))
    except tf.errors.OpError as error:
        raise ValueError(f"reading the training images failed: {_first_line(error)}") from None
    if count == 0:
        return (0.0,) * channels, (1.0,) * channels, 0
    centred = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - centred**2, 0.0))
    std[std == 0] = 1.0
    return tuple(map(float, centred + shift)), tuple(map(float, std)), int(count)


def _first_means(images, divisor, channels):
    for image in images.take(1):
        pixels = tf.reshape(tf.cast(image, tf.float64) / divisor, (-1, channels))
        return tf.reduce_mean(pixels, axis=0)
    return tf.zeros((channels,), tf.float64)


def _first_line(error):
    text = str(getattr(error, "message", None) or error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


# -------------------------------------------------------------------- TFDS


def _tfds_how(name, where):
    return (
        f"On a machine with internet run once `tfds build {name} --data_dir={where}`, "
        f"then train with --data_dir={where}."
    )


def _tfds_builder(name, data_dir):
    import tensorflow_datasets as tfds

    where = data_dir or tfds.core.constants.DATA_DIR
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataNotFound(
            f"tfds:{name} is not in the TFDS catalog nor prepared in {where}. "
            + _tfds_how(name, where)
        ) from None
    except Exception as error:  # a damaged or foreign folder
        raise DataNotFound(
            f"{where} does not hold a readable {name} ({_first_line(error)}). "
            + _tfds_how(name, where)
        ) from None


def _tfds_keys(name, info):
    """``(image key, label key, num_classes)`` of an image-classification
    dataset's features, or a ``ValueError`` saying what does not fit."""
    keys = info.supervised_keys or ("image", "label")
    features = info.features
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(k in features for k in keys)):
        raise ValueError(
            f"tfds:{name} is not an image-classification dataset (no (image, label) features)."
        )
    image, label = (features[k] for k in keys)
    num_classes = getattr(label, "num_classes", None)
    shape = tuple(getattr(image, "shape", ()))
    if not num_classes or len(shape) != 3 or None in shape:
        raise ValueError(
            f"tfds:{name} is not an image classification dataset of fixed-size images "
            f"(its {keys[0]!r} has shape {shape}, its {keys[1]!r} "
            f"{num_classes or 'no'} classes)."
        )
    return keys[0], keys[1], int(num_classes)


def _tfds(name, data_dir):
    import tensorflow_datasets as tfds

    where = data_dir or tfds.core.constants.DATA_DIR
    builder = _tfds_builder(name, data_dir)
    splits = sorted(builder.info.splits.keys())
    if splits and not {"train", "test"} <= set(splits):
        raise ValueError(
            f"tfds:{name} has the splits {', '.join(splits)}; training needs 'train' and 'test'."
        )
    image_key, label_key, num_classes = _tfds_keys(name, builder.info)
    try:
        train, test = (
            builder.as_dataset(split=split, shuffle_files=False) for split in ("train", "test")
        )
    except AssertionError:  # TFDS's "could not find data"
        raise DataNotFound(f"{name} is not prepared in {where}. {_tfds_how(name, where)}") from None
    pairs = lambda example: (example[image_key], example[label_key])  # noqa: E731
    train, test = (d.map(pairs, num_parallel_calls=tf.data.AUTOTUNE) for d in (train, test))
    if "test" in builder.info.splits:
        num_test = builder.info.splits["test"].num_examples
    else:  # split sizes unknown (TFDS's mock data): count once
        num_test = int(test.reduce(0, lambda n, _: n + 1))
    divisor = 255.0 if train.element_spec[0].dtype == tf.uint8 else 1.0
    return _with_statistics(train, test, num_classes, num_test, divisor)


# ----------------------------------------------------------------- folders


def _layout_error(message):
    return ValueError(f"{message}\n{FOLDER_LAYOUT}")


def _class_folders(folder):
    return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _first_image(folder, classes):
    for name in classes:
        files = sorted(
            f
            for f in os.listdir(os.path.join(folder, name))
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if files:
            return os.path.join(folder, name, files[0])
    raise _layout_error(f"No images in the class folders of {folder!r}.")


def _image_shape(path):
    """``(height, width, channels)`` of the image file at ``path``."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except tf.errors.OpError as error:
        raise ValueError(f"cannot read the image {path!r} ({_first_line(error)}).") from None
    return tuple(int(d) for d in image.shape)


def _image_folder(folder, classes, size, color_mode):
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        folder,
        labels="inferred",
        label_mode="int",
        class_names=classes,
        color_mode=color_mode,
        batch_size=None,
        image_size=size,
        shuffle=False,
        verbose=False,
    )
    count = len(dataset.file_paths)
    if count == 0:
        raise _layout_error(f"No images in the class folders of {folder!r}.")
    return dataset, count


def _folder(path):
    train_dir, test_dir = (os.path.join(path, split) for split in ("train", "test"))
    if not (os.path.isdir(train_dir) and os.path.isdir(test_dir)):
        raise _layout_error(f"{path!r} is not a folder dataset: expected train/ and test/ in it.")
    classes = _class_folders(train_dir)
    test_classes = _class_folders(test_dir)
    if not classes or set(test_classes) != set(classes):
        raise _layout_error(
            f"{path!r}: train/ and test/ must hold the same class folders; train/ has "
            f"{classes}, test/ has {test_classes}."
        )
    height, width, channels = _image_shape(_first_image(train_dir, classes))
    color_mode = {1: "grayscale", 2: "grayscale", 4: "rgba"}.get(channels, "rgb")
    train, num_train = _image_folder(train_dir, classes, (height, width), color_mode)
    test, num_test = _image_folder(test_dir, classes, (height, width), color_mode)
    return _with_statistics(train, test, len(classes), num_test, 255.0, num_train)


# -------------------------------------------------------------------- .npz


def _npz_error(path, message):
    return ValueError(f"{path!r}: {message}\n{NPZ_LAYOUT}")


def _npz_arrays(path):
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except Exception as error:  # not a zip, damaged, object arrays
        raise _npz_error(path, f"cannot be read as .npz ({_first_line(error)}).") from None


def _npz_images(path, arrays, key):
    images = arrays[key]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or 0 in images.shape[1:]:
        raise _npz_error(
            path, f"{key} has shape {images.shape}; expected (N, H, W, C) or (N, H, W)."
        )
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise _npz_error(path, f"{key} has dtype {images.dtype}; expected uint8 or float.")
    if images.dtype != np.uint8 and not np.all(np.isfinite(images)):
        raise _npz_error(path, f"{key} holds NaN or infinite values.")
    return images


def _npz_labels(path, arrays, key, count):
    labels = arrays[key]
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise _npz_error(
            path,
            f"{key} has shape {labels.shape} and dtype {labels.dtype}; expected integer "
            "labels of shape (N,) or (N, 1).",
        )
    if len(labels) != count:
        images = "x" + key[1:]
        raise _npz_error(path, f"{images} holds {count} images but {key} {len(labels)} labels.")
    return labels.astype(np.int64)


def _npz_classes(path, arrays, labels):
    """The number of classes: the ``num_classes`` array, or the largest
    label + 1; every label must lie in ``0..K-1``."""
    largest = max(int(y.max()) for y in labels.values())
    if "num_classes" in arrays:
        given = arrays["num_classes"]
        if given.ndim != 0 or not np.issubdtype(given.dtype, np.integer) or int(given) < 1:
            raise _npz_error(path, f"num_classes must be one integer >= 1, got {given!r}.")
        num_classes = int(given)
    else:
        num_classes = largest + 1
    for key, y in labels.items():
        if y.min() < 0 or y.max() >= num_classes:
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise _npz_error(
                path, f"{key} holds the label {bad}; labels must be in 0..{num_classes - 1}."
            )
    return num_classes


def _npz(path):
    arrays = _npz_arrays(path)
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise _npz_error(path, f"missing {', '.join(missing)}.")
    x_train, x_test = (_npz_images(path, arrays, key) for key in ("x_train", "x_test"))
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise _npz_error(
            path,
            f"x_train is {x_train.shape[1:]} {x_train.dtype} images, x_test "
            f"{x_test.shape[1:]} {x_test.dtype}; both must be the same.",
        )
    if not len(x_train) or not len(x_test):
        raise _npz_error(path, "x_train and x_test must each hold at least one image.")
    labels = {
        "y_train": _npz_labels(path, arrays, "y_train", len(x_train)),
        "y_test": _npz_labels(path, arrays, "y_test", len(x_test)),
    }
    num_classes = _npz_classes(path, arrays, labels)
    train = tf.data.Dataset.from_tensor_slices((x_train, labels["y_train"]))
    test = tf.data.Dataset.from_tensor_slices((x_test, labels["y_test"]))
    divisor = 255.0 if x_train.dtype == np.uint8 else 1.0
    return _with_statistics(train, test, num_classes, len(x_test), divisor, len(x_train))
