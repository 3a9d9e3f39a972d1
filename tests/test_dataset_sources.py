"""Datasets beyond the named four: ``.npz`` files, folders of class
subfolders, ``tfds:NAME`` (TFDS's mock data and a dataset prepared in
tmp_path), each made on the fly; their statistics against a numpy float64
oracle, their errors, and the training program and the sweep on a
grayscale 28x28 ``.npz``."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from test_train_main import train_here

from keras_capacity import models
from keras_capacity.sweep import engine, grid
from keras_capacity.training import RunConfig, data, dataset_sources
from keras_capacity.training.config import ConfigError


def write_npz(path, n_train=40, n_test=12, shape=(28, 28), classes=3, seed=0, **extra):
    """Grayscale uint8 images (N, 28, 28) and labels 0..classes-1."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=np.arange(n_train) % classes,
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=np.arange(n_test) % classes,
    )
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def images_and_labels(dataset):
    pairs = list(dataset.unbatch().as_numpy_iterator())
    return np.stack([x for x, _ in pairs]).astype(np.float64), np.array([y for _, y in pairs])


def oracle(images):
    """Per-channel float64 mean and std of ``(N, H, W, C)`` images."""
    pixels = images.astype(np.float64).reshape(-1, images.shape[-1])
    return pixels.mean(axis=0), pixels.std(axis=0)


def assert_standardized(images):
    mean, std = oracle(images)
    np.testing.assert_allclose(mean, 0.0, atol=1e-5)
    np.testing.assert_allclose(std, 1.0, atol=1e-5)


# ------------------------------------------------------------------ forms


def test_forms_of_the_dataset_flag(tmp_path):
    write_npz(tmp_path / "digits.npz")
    (tmp_path / "folder").mkdir()
    parse = data.source
    assert parse("cifar10") == dataset_sources.Source("named", "cifar10")
    assert parse("tfds:svhn_cropped") == dataset_sources.Source("tfds", "svhn_cropped")
    assert parse("tfds:cifar10_corrupted/brightness_1:1.0.0").target == (
        "cifar10_corrupted/brightness_1:1.0.0"
    )
    assert parse(str(tmp_path / "digits.npz")).kind == "npz"
    assert parse(str(tmp_path / "folder")).kind == "folder"
    for bad, message in [
        ("tfds:", "is not tfds:NAME"),
        ("tfds:mn ist", "is not tfds:NAME"),
        (str(tmp_path / "none.npz"), "no such .npz file"),
        (str(tmp_path / "none"), "no such folder"),
        ("mnist", "Unknown dataset 'mnist'; expected shapes10, .*tfds:NAME"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse(bad)
    names = {
        "shapes10": "shapes10",
        "tfds:mnist": "tfds_mnist",
        "tfds:cifar10_corrupted/brightness_1": "tfds_cifar10_corrupted_brightness_1",
        "data/digits.npz": "digits",
        "/data/my images/": "my_images",
    }
    assert {name: dataset_sources.short_name(name) for name in names} == names


def test_the_config_checks_the_dataset_before_anything_runs(tmp_path):
    write_npz(tmp_path / "digits.npz")
    assert RunConfig(dataset=str(tmp_path / "digits.npz")).dataset == str(tmp_path / "digits.npz")
    assert RunConfig(dataset="tfds:mnist").dataset == "tfds:mnist"
    for bad, message in [
        ("mnist", "--dataset: unknown value 'mnist'; expected shapes10, "),
        ("tfds:", "--dataset: 'tfds:' is not tfds:NAME"),
        (str(tmp_path / "gone.npz"), "--dataset: no such .npz file"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RunConfig(dataset=bad)


# -------------------------------------------------------------------- .npz


def test_grayscale_npz(tmp_path):
    arrays = write_npz(tmp_path / "digits.npz", y_test=np.array([2, 0, 1] * 4)[:, None])
    loaded = data.load(str(tmp_path / "digits.npz"), batch_size=16)
    assert (loaded.num_classes, loaded.num_train, loaded.num_test) == (3, 40, 12)
    assert loaded.image_shape == (28, 28, 1)
    mean, std = oracle(arrays["x_train"][..., None] / 255.0)
    np.testing.assert_allclose(loaded.statistics, (mean, std), rtol=1e-12)
    train_images, train_labels = images_and_labels(loaded.train)
    assert_standardized(train_images)
    assert sorted(train_labels) == sorted(arrays["y_train"])
    test_images, test_labels = images_and_labels(loaded.test)  # in the file's order
    np.testing.assert_array_equal(test_labels, arrays["y_test"][:, 0])
    expected = (arrays["x_test"][..., None] / 255.0 - mean) / std
    np.testing.assert_allclose(test_images, expected, atol=1e-5)


def test_float_rgb_npz_far_from_zero_with_num_classes(tmp_path):
    """Float images are not rescaled; their statistics keep full precision
    at an offset of 1000 (the sums are taken around the first image's)."""
    rng = np.random.default_rng(1)
    x_train = (1000 + 0.01 * rng.standard_normal((30, 6, 5, 3))).astype(np.float64)
    x_train[..., 2] = 7.0  # a constant channel: std 1, normalized to 0
    write_npz(
        tmp_path / "f.npz",
        x_train=x_train,
        x_test=x_train[:4],
        y_train=np.arange(30) % 2,
        y_test=np.zeros(4, np.int32),
        num_classes=np.array(5),
    )
    loaded = data.load(str(tmp_path / "f.npz"), batch_size=8)
    assert (loaded.num_classes, loaded.image_shape) == (5, (6, 5, 3))
    mean, std = oracle(x_train)
    std[2] = 1.0
    np.testing.assert_allclose(loaded.statistics[0], mean, rtol=1e-13)
    np.testing.assert_allclose(loaded.statistics[1], std, rtol=1e-9)
    images, _ = images_and_labels(loaded.train)
    assert_standardized(images[..., :2])
    np.testing.assert_array_equal(images[..., 2], 0.0)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(y_test=None), "missing y_test"),
        (dict(x_train=np.zeros((40, 28), np.uint8)), r"x_train has shape \(40, 28\); expected"),
        (dict(y_train=np.zeros(39, np.int64)), "x_train holds 40 images but y_train 39 labels"),
        (dict(y_train=np.full(40, 0.5)), "y_train has shape .* dtype float64; expected integer"),
        (dict(x_test=np.zeros((12, 28, 28), np.int32)), "x_test has dtype int32; expected uint8"),
        (dict(x_test=np.zeros((12, 14, 14), np.uint8)), "both must be the same"),
        (dict(y_test=np.full(12, -1)), "y_test holds the label -1; labels must be in 0..2"),
        (dict(num_classes=np.array(2)), "y_train holds the label 2; labels must be in 0..1"),
        (dict(x_train=np.full((40, 28, 28), np.nan)), "x_train holds NaN"),
    ],
)
def test_npz_errors_name_what_was_expected(tmp_path, changes, message):
    write_npz(tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=message) as error:
        data.load(str(tmp_path / "bad.npz"))
    assert "x_train, x_test   images, uint8" in str(error.value)  # the expected layout


# ----------------------------------------------------------------- folders


def write_folder(root, classes, per_class, size=(6, 5), channels=3, seed=0):
    """PNGs under root/{train,test}/<class>/; returns the train images by class."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in (("train", per_class), ("test", 1)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
                tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(image))
                if split == "train":
                    written.setdefault(name, []).append(image)
    return written


def test_folder_of_class_folders(tmp_path):
    written = write_folder(tmp_path, ("dog", "cat"), per_class=3)
    loaded = data.load(str(tmp_path), batch_size=4)
    assert (loaded.num_classes, loaded.num_train, loaded.num_test) == (2, 6, 2)
    assert loaded.image_shape == (6, 5, 3)
    images, labels = images_and_labels(loaded.train)
    assert labels.dtype == np.int64 and sorted(labels) == [0, 0, 0, 1, 1, 1]
    assert_standardized(images)
    everything = np.stack(written["cat"] + written["dog"])  # sorted class names: cat = 0
    mean, std = oracle(everything / 255.0)
    np.testing.assert_allclose(loaded.statistics, (mean, std), rtol=1e-12)
    # Each image comes with its class: cat's images are the first three.
    raw = np.round((images * std + mean) * 255).astype(np.uint8)
    for image, label in zip(raw, labels, strict=True):
        name = ("cat", "dog")[label]
        assert any(np.array_equal(image, other) for other in written[name])
    _, test_labels = images_and_labels(loaded.test)
    np.testing.assert_array_equal(test_labels, [0, 1])


def test_grayscale_folder_takes_the_first_images_size(tmp_path):
    write_folder(tmp_path, ("a", "b"), per_class=2, size=(9, 7), channels=1)
    tf.io.write_file(
        str(tmp_path / "train" / "b" / "9.png"), tf.io.encode_png(np.zeros((4, 4, 1), np.uint8))
    )
    loaded = data.load(str(tmp_path), batch_size=8)
    assert loaded.image_shape == (9, 7, 1) and loaded.num_train == 5


def test_folder_errors_show_the_layout(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="expected train/ and test/ in it.\nDATASET/"):
        data.load(str(tmp_path))
    (tmp_path / "test" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"train/ has \['a'\], test/ has \['b'\]"):
        data.load(str(tmp_path))
    (tmp_path / "test" / "a").mkdir()
    (tmp_path / "train" / "b").mkdir()
    with pytest.raises(ValueError, match="No images in the class folders.*\nDATASET/"):
        data.load(str(tmp_path))


# -------------------------------------------------------------------- TFDS


def test_tfds_mnist_from_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        loaded = data.load("tfds:mnist", str(tmp_path), batch_size=8)
        images, labels = images_and_labels(loaded.train)
    assert (loaded.num_classes, loaded.num_train, loaded.num_test) == (10, 24, 24)
    assert loaded.image_shape == (28, 28, 1) and labels.dtype == np.int64
    assert_standardized(images)


def prepare(data_dir, name, splits, size=(6, 5, 1), classes=3):
    """A TFDS dataset ``name`` prepared in ``data_dir`` (no network)."""

    def split(count, seed):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, (count, *size), dtype=np.uint8)
        return images, np.arange(count) % classes

    arrays = {name_: split(count, seed) for seed, (name_, count) in enumerate(splits.items())}
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=size),
            "label": tfds.features.ClassLabel(num_classes=classes),
        }
    )
    datasets = {
        name_: tf.data.Dataset.from_tensor_slices({"image": x, "label": y})
        for name_, (x, y) in arrays.items()
    }
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, split_datasets=datasets, data_dir=data_dir
    )
    return arrays


def test_tfds_dataset_prepared_in_data_dir(tmp_path, capfd):
    arrays = prepare(str(tmp_path), "tiny_gray", {"train": 20, "test": 7})
    prepare(str(tmp_path), "train_only", {"train": 5})
    capfd.readouterr()  # TFDS's progress bars
    loaded = data.load("tfds:tiny_gray", str(tmp_path), batch_size=8)
    assert (loaded.num_classes, loaded.num_train, loaded.num_test) == (3, 20, 7)
    mean, std = oracle(arrays["train"][0] / 255.0)
    np.testing.assert_allclose(loaded.statistics, (mean, std), rtol=1e-12)
    assert_standardized(images_and_labels(loaded.train)[0])
    with pytest.raises(ValueError, match="tfds:train_only has the splits train; training needs"):
        data.load("tfds:train_only", str(tmp_path))
    with pytest.raises(
        data.DataNotFound, match=f"mnist is not prepared in {tmp_path}.*tfds build mnist"
    ):
        data.load("tfds:mnist", str(tmp_path))
    with pytest.raises(data.DataNotFound, match="tfds:no_such_thing is not in the TFDS catalog"):
        data.load("tfds:no_such_thing", str(tmp_path))


# ------------------------------------------------------- models, end to end


def test_the_paper_models_take_grayscale_28x28():
    for build in (models.simple_convnet6, models.simple_convnet11):
        assert build(10, n_channels=4, input_shape=(28, 28, 1)).output_shape == (None, 10)
    # Odd maps (7x7 after the stem's pools): the shortcut rounds up as the max-pool.
    assert models.preact_resnet18(10, input_shape=(28, 28, 1)).output_shape == (None, 10)
    with pytest.raises(ValueError, match="at most 32x32.*preact_resnet18 takes any size"):
        models.simple_convnet6(10, input_shape=(64, 64, 3))


NPZ_RUN = [
    "--arch=simple_convnet6",
    "--n_channels=4",
    "--bs=32",
    "--epochs=1",
    "--lr=0.05",
    "--lip=2,1.5,-1,2",
    "--dist=4,4,-1,2",
    "--proj_mode=radial",
]


def test_training_program_on_a_grayscale_npz(tmp_path, monkeypatch, capfd):
    """train_main.py's flags and main function, in this process
    (test_train_main's ``train_here``: the program as a process is tested
    there)."""
    write_npz(tmp_path / "digits.npz", n_train=64, n_test=32)
    run_dir = tmp_path / "run"
    code, _, stderr = train_here(
        [f"--dataset={tmp_path / 'digits.npz'}", *NPZ_RUN, f"--logdir={run_dir}"],
        monkeypatch,
        capfd,
    )
    assert code == 0, stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["all_constraints_hold"]
    assert (run_dir / "report.md").exists()
    assert f"--dataset={tmp_path / 'digits.npz'}\n" in (run_dir / "flags.txt").read_text()


def test_the_sweep_trains_its_trials_on_the_dataset(tmp_path):
    """The sweep's trials inherit the base flags' dataset (the baseline
    trial alone, trained for real, keeps this short)."""
    write_npz(tmp_path / "digits.npz", n_train=32, n_test=16, classes=4)
    base = RunConfig(
        dataset=str(tmp_path / "digits.npz"),
        arch="simple_convnet6",
        n_channels=4,
        bs=32,
        epochs=1,
        proj_mode="radial",
    )
    axes = grid.parse_grid(["dist.inner:2"])
    trials = grid.trials(base, axes, 1)
    assert {trial.config.dataset for trial in trials} == {base.dataset}
    sweep = engine.Sweep(str(tmp_path / "sweep"), {}, axes, trials[:1], log=lambda line: None)
    summary = engine.search(sweep)
    (trial,) = summary["trials"]
    assert trial["baseline"] and trial["status"] == "done", trial
    saved = (tmp_path / "sweep" / "trials" / trial["name"] / "flags.txt").read_text()
    assert f"--dataset={tmp_path / 'digits.npz'}\n" in saved
