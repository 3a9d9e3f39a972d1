"""keras-capacity-report --model: the report of a model trained elsewhere,
and the bad inputs that each give one line, exit status 2 and no file."""

import json
import os
import re

import keras
import numpy as np
import pytest

from keras_capacity.training import data as datasets
from keras_capacity.training import report


def small_model(input_shape=(32, 32, 3), classes=10):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, name="fc")(x))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A model saved at init and after its weights moved, and a small npz."""
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    model = small_model()
    model.save(folder / "init.keras")
    rng = np.random.default_rng(0)
    model.set_weights([w + 0.05 * rng.standard_normal(w.shape) for w in model.get_weights()])
    model.save(folder / "trained.keras")
    with np.load(datasets.SHAPES10_PATH) as arrays:
        np.savez(
            folder / "small.npz",
            x_train=arrays["x_train"][:300],
            y_train=arrays["y_train"][:300],
            x_test=arrays["x_test"][:100],
            y_test=arrays["y_test"][:100],
        )
    return folder


def run(argv, capsys):
    status = report.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_the_report_of_a_model_trained_elsewhere(saved, tmp_path, capsys):
    out = tmp_path / "report"
    status, printed, _ = run(
        [
            "--model",
            saved / "trained.keras",
            "--init",
            saved / "init.keras",
            "--data",
            saved / "small.npz",
            "--inputs",
            "raw",
            "--out",
            out,
        ],
        capsys,
    )
    assert status == 0, printed
    assert sorted(os.listdir(out)) == [
        "bounds.png",
        "constraints.png",
        "margins.png",
        "report.json",
        "report.md",
    ]
    written = json.loads((out / "report.json").read_text())
    init, trained = (keras.models.load_model(saved / n) for n in ("init.keras", "trained.keras"))
    kernel, initial = (np.asarray(m.get_layer("fc").kernel, np.float64) for m in (trained, init))
    row = next(r for r in written["layers"] if r["name"] == "fc")
    assert row["distance"] == pytest.approx(np.sqrt(((kernel - initial) ** 2).sum(0)).sum())
    assert written["bounds_apply"] and written["test_error_bounds"]["ours_norms"]["value"] > 0
    # The margins are those of the model on the raw images.
    with np.load(saved / "small.npz") as arrays:
        scores = np.asarray(trained.predict(arrays["x_test"].astype("float32"), verbose=0))
        y = arrays["y_test"].astype(int)
        own = scores[np.arange(len(y)), y]
        others = np.where(np.eye(scores.shape[1], dtype=bool)[y], -np.inf, scores).max(1)
        accuracy = np.mean(own > others)
    assert written["test_accuracy"] == pytest.approx(accuracy)
    text = (out / "report.md").read_text()
    assert "folded into 'conv'" in text and "trained.keras on" in text


def test_without_init_the_distances_are_unknown(saved, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--model", saved / "trained.keras", "--data", saved / "small.npz", "--out", out]
    assert run(argv, capsys)[0] == 0
    written = json.loads((out / "report.json").read_text())
    assert all(r["distance"] is None for r in written["layers"])
    assert written["test_error_bounds"]["ours_norms"]["value"] is None
    assert "unknown" in written["not_applicable"]["ours_norms"]
    assert "| unknown |" in (out / "report.md").read_text()


def save(model, path):
    model.save(path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing model", "is missing"),
        ("damaged model", "is damaged"),
        ("no kernels", "no Dense or Conv2D"),
        ("too few classes", "10 classes, but the model gives 4 scores"),
        ("wrong input shape", r"inputs of shape \(32, 32, 3\).*takes \(28, 28, 1\)"),
        ("missing init", "does not exist"),
        ("missing data", "no such .npz file"),
        ("mismatched init", "'conv' has kernel shape"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(saved, tmp_path, capsys, case, message):
    model, init, data = saved / "trained.keras", None, saved / "small.npz"
    if case == "missing model":
        model = tmp_path / "nothing.keras"
    elif case == "damaged model":
        model = tmp_path / "damaged.keras"
        model.write_bytes(b"not a zip file")
    elif case == "no kernels":
        plain = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()])
        model = save(plain, tmp_path / "plain.keras")
    elif case == "too few classes":
        model = save(small_model(classes=4), tmp_path / "four.keras")
    elif case == "wrong input shape":
        model = save(small_model((28, 28, 1)), tmp_path / "gray.keras")
    elif case == "missing init":
        init = tmp_path / "nothing.keras"
    elif case == "missing data":
        data = tmp_path / "nothing.npz"
    elif case == "mismatched init":
        other = keras.Model(*_wider_conv())
        init = save(other, tmp_path / "wider.keras")
    out = tmp_path / "report"
    argv = ["--model", model, "--data", data, "--inputs", "raw", "--out", out]
    argv += ["--init", init] if init else []
    status, _, error = run(argv, capsys)
    assert status == 2
    assert len(error.strip().splitlines()) == 1 and error.startswith("error: ")
    assert re.search(message, error), error
    assert not out.exists()


def _wider_conv():
    inputs = keras.Input((32, 32, 3))
    return inputs, keras.layers.Conv2D(5, 3, name="conv")(inputs)


def test_run_directory_and_model_are_exclusive(capsys):
    with pytest.raises(SystemExit) as stopped:
        report.main(["somewhere", "--model", "m.keras"])
    assert stopped.value.code == 2
    with pytest.raises(SystemExit):
        report.main(["--model", "m.keras"])
    assert "--model needs --data and --out" in capsys.readouterr().err
