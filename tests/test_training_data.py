"""Input pipelines: the bundled dataset, random labels, Tiny-ImageNet folders."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_capacity.training import data


def test_bundled_dataset_statistics_and_shapes():
    loaded = data.load("shapes10", batch_size=100)
    assert (loaded.num_classes, loaded.num_train, loaded.num_test) == (10, 5000, 1000)
    assert loaded.image_shape == (32, 32, 3)
    images = np.concatenate([x.numpy() for x, _ in loaded.train]).astype(np.float64)
    # Normalized with the dataset's own statistics: mean 0, std 1 per channel.
    np.testing.assert_allclose(images.reshape(-1, 3).mean(0), 0.0, atol=2e-3)
    np.testing.assert_allclose(images.reshape(-1, 3).std(0), 1.0, atol=2e-3)


def labels_of(dataset):
    return np.concatenate([y.numpy() for _, y in dataset])


def test_random_labels_are_seeded_and_limit_to_takes_the_first():
    first = data.load("shapes10", batch_size=64, limit_to=300, randomize_labels=True, seed=3)
    again = data.load("shapes10", batch_size=64, limit_to=300, randomize_labels=True, seed=3)
    assert first.num_train == 300
    unshuffled = lambda d: d.train.unbatch().map(lambda x, y: (tf.reduce_sum(x), y))  # noqa: E731
    pairs = sorted((float(s), int(y)) for s, y in unshuffled(first))
    assert pairs == sorted((float(s), int(y)) for s, y in unshuffled(again))
    true = np.load(data.SHAPES10_PATH)["y_train"][:300]
    expected = data.random_labels(300, 10, 3)
    assert sorted(labels_of(first.train)) == sorted(expected)
    assert np.mean(expected == true) < 0.3


def write_tiny_imagenet(root, wnids=("n01", "n02"), per_class=3):
    os.makedirs(os.path.join(root, "val", "images"))
    rows = []
    for index, wnid in enumerate(wnids):
        folder = os.path.join(root, "train", wnid, "images")
        os.makedirs(folder)
        for i in range(per_class):
            image = tf.fill((64, 64, 3), tf.constant(40 * index + i, tf.uint8))
            tf.io.write_file(os.path.join(folder, f"{wnid}_{i}.JPEG"), tf.io.encode_jpeg(image))
        name = f"val_{index}.JPEG"
        tf.io.write_file(
            os.path.join(root, "val", "images", name),
            tf.io.encode_jpeg(tf.zeros((64, 64, 3), tf.uint8)),
        )
        rows.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    with open(os.path.join(root, "val", "val_annotations.txt"), "w") as f:
        f.writelines(rows)


def test_tiny_imagenet_folder(tmp_path):
    write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    loaded = data.load("tiny_imagenet", str(tmp_path), batch_size=4)
    assert (loaded.num_classes, loaded.num_train, loaded.num_test) == (2, 6, 2)
    assert loaded.image_shape == (64, 64, 3)
    assert sorted(labels_of(loaded.train)) == [0, 0, 0, 1, 1, 1]
    assert sorted(labels_of(loaded.test)) == [0, 1]


def test_tiny_imagenet_errors_show_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        data.load("tiny_imagenet", str(tmp_path))
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("broken line\n")
    with pytest.raises(ValueError, match="line 3.*\n.*tiny-imagenet-200/"):
        data.load("tiny_imagenet", str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
        data.load("mnist")


def test_batches_are_the_normalized_images_and_augmentation_keeps_their_shape():
    with np.load(data.SHAPES10_PATH) as arrays:
        raw, labels = arrays["x_test"][:64].astype(np.float64), arrays["y_test"][:64]
    mean, std = (np.array(v) for v in data.STATISTICS["shapes10"])
    x, y = next(iter(data.load("shapes10", batch_size=64).test))
    assert x.dtype == tf.float32 and y.dtype == tf.int64
    np.testing.assert_allclose(x.numpy(), (raw / 255 - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), labels)
    x, _ = next(iter(data.load("shapes10", batch_size=64, augment=True).train))
    assert x.shape == (64, 32, 32, 3) and x.dtype == tf.float32
    # Crops and flips move pixels but only ever show normalized 8-bit values.
    levels = (np.arange(256)[:, None] / 255 - mean) / std
    nearest = np.abs(x.numpy()[:4].reshape(-1, 3)[:, None, :] - levels[None]).min(axis=1)
    assert nearest.max() < 1e-5


def test_the_tfds_builder_code_that_preparing_runs_imports(tmp_path):
    """tensorflow-datasets' builders import importlib_resources, which it
    does not declare; setup.cfg does, so a fresh install can prepare CIFAR."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("cifar10", data_dir=str(tmp_path))
    assert str(type(builder).code_path).endswith("cifar.py")


def test_prepare_command(tmp_path, capsys):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=8):  # no network: preparing is a no-op
        assert data.main(["prepare", "cifar10", f"--data_dir={tmp_path}"]) == 0
    assert (
        f"cifar10 is ready in {tmp_path}; train with --dataset=cifar10 --data_dir={tmp_path}"
        in capsys.readouterr().out
    )
    with pytest.raises(SystemExit):
        data.main(["prepare", "shapes10", f"--data_dir={tmp_path}"])


def test_a_foreign_data_dir_is_one_clear_error(tmp_path):
    folder = tmp_path / "cifar10" / "3.0.2"
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{garbage")
    with pytest.raises(
        data.DataNotFound,
        match=f"{tmp_path} does not hold a readable cifar10 "
        r"\(ParseError: .*keras-capacity-data prepare",
    ):
        data.load("cifar10", str(tmp_path))
