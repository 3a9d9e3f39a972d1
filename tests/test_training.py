"""keras_capacity.training in-process: the config, train_and_evaluate, run
directories that were interrupted or damaged, and what TensorBoard gets."""

import glob
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.plugins.hparams import plugin_data_pb2

import keras_capacity as kc
from keras_capacity.training import ConfigError, RunConfig, RunError, runs, train_and_evaluate
from keras_capacity.training import data as datasets

SMALL = dict(
    dataset="shapes10",
    arch="simple_convnet6",
    n_channels=8,
    limit_to=256,
    bs=64,
    epochs=2,
    lr=0.05,
    lip="2,1.5,-1,2",
    dist="4,4,-1,2",
    proj_freq=1,
    proj_mode="radial",
)


def quiet(line):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small finished run, shared by the tests that only read it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    summary = train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=quiet)
    return run_dir, summary


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(lip="0,1,1,1"), r"--lip entry 1 \(first\) must be > 0"),
        (dict(lip="1,2,3"), "--lip must have four entries"),
        (dict(dist="1,-2,3,4"), r"--dist entry 2 \(inner\) must be >= 0"),
        (dict(lip="1,a,3,4"), "must be a number"),
        (dict(seed=-1), "--seed must be >= 0"),
        (dict(n_channels=0), "--n_channels must be >= 1"),
        (dict(lr=math.nan), "--lr must be a finite number"),
        (dict(lr=0.0), "--lr must be a finite number in \\(0, inf\\)"),
        (dict(milestones="-5,-3"), "--milestones must be increasing epochs >= 1"),
        (dict(milestones="60,60,160"), "--milestones must be increasing"),
        (dict(milestones="120,60"), "--milestones must be increasing"),
        (dict(milestones="60,x"), "--milestones must be epochs"),
        (dict(momentum=1.0), r"--momentum must be a finite number in \[0, 1\)"),
        (dict(momentum=-0.1), "--momentum"),
        (dict(wd=math.inf), "--wd must be a finite number"),
        (dict(gamma=math.nan), "--gamma must be a finite number"),
        (dict(limit_to=0), "--limit_to must be >= 1 \\(or -1\\)"),
        (dict(bs=1.5), "--bs must be an integer"),
        (dict(arch="simple_convnet6", bn=True), "--bn applies to"),
        (dict(dataset="mnist"), "--dataset: unknown value 'mnist'"),
    ],
)
def test_bad_settings_name_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**{**SMALL, **changes})


def test_config_round_trips_through_its_flag_file():
    config = RunConfig(**SMALL, milestones="3,7")
    assert config.lip == (2.0, 1.5, math.inf, 2.0)
    text = runs.flag_file_text(config)
    assert "--lip=2,1.5,-1,2\n" in text and "--milestones=3,7\n" in text
    assert RunConfig.from_flag_values(runs.parse_flag_file(text)) == config
    assert config.differences(config.replace(epochs=5)) == ["--epochs: 2 -> 5"]
    # "no bound" is inf however it is spelled
    assert RunConfig(**{**SMALL, "lip": ["2", "1.5", "inf", "2"]}) == config.replace(
        milestones=(60, 120, 160)
    )


def test_bad_settings_write_nothing(tmp_path):
    with pytest.raises(ConfigError):
        train_and_evaluate(
            RunConfig(**SMALL).replace(bs=63, strategy="mirrored", cpu_devices=2),
            str(tmp_path / "run"),
        )
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------- a finished run


def test_summary_records_the_run(finished):
    run_dir, summary = finished
    assert summary["all_constraints_hold"] and summary["epochs"] == 2
    assert summary["sessions"] == 1 and summary["epochs_this_session"] == 2
    assert summary["images_per_s"] > 0 and summary["train_time_s"] > 0
    versions = summary["versions"]
    assert versions["keras"] == keras.__version__ and versions["tensorflow"] == tf.__version__
    assert versions["keras_capacity"] == kc.__version__ and "python" in versions
    if os.path.isdir(os.path.join(os.path.dirname(kc.__file__), "..", ".git")):
        assert len(versions["git_commit"].split("-")[0]) == 40
    assert summary["sum_of_distances"] == pytest.approx(
        sum(r["distance"] for r in summary["layers"] if r["distance"] is not None)
    )
    assert summary["loss_gap"] == pytest.approx(summary["test_loss"] - summary["train_loss"])
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_summary_metrics_against_an_independent_evaluation(finished):
    """The final model's ``predict`` on the test arrays, scored in numpy
    float64: accuracy (the label's score strictly the largest), mean
    cross-entropy, positive margins."""
    from scipy.special import logsumexp

    from keras_capacity.training import data as datasets

    run_dir, summary = finished
    config = RunConfig(**SMALL)
    test = datasets.load(
        config.dataset, None, config.bs, config.limit_to, config.rand, config.augment, config.seed
    ).test
    x = np.concatenate([np.asarray(inputs) for inputs, _ in test])
    y = np.concatenate([np.asarray(labels) for _, labels in test]).astype(np.int64)
    model = keras.models.load_model(run_dir / "model_final.keras", compile=False)
    scores = np.asarray(model.predict(x, batch_size=128, verbose=0), np.float64)
    rows = np.arange(len(y))
    assert summary["num_test"] == len(y)
    loss = np.mean(logsumexp(scores, axis=1) - scores[rows, y])
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)
    others = scores.copy()
    others[rows, y] = -np.inf
    margins = scores[rows, y] - others.max(axis=1)
    assert summary["test_accuracy"] == pytest.approx(np.mean(scores[rows, y] > others.max(axis=1)))
    assert summary["test_margins"]["positive"] == pytest.approx(np.mean(margins > 0))
    assert summary["test_margins"]["median"] == pytest.approx(np.median(margins), rel=1e-4)


def events(folder):
    """Every summary value in the event files under ``folder``: ``[(tag, step, value)]``."""
    found = []
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.append((value, event.step, path))
    return found


def test_tensorboard_hparams_are_numeric_and_carry_the_capacity(finished):
    run_dir, summary = finished
    values = events(str(run_dir / "tensorboard" / "hparams"))
    start = [
        v
        for v, _, _ in values
        if v.metadata.plugin_data.plugin_name == "hparams"
        and plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content).HasField(
            "session_start_info"
        )
    ]
    info = plugin_data_pb2.HParamsPluginData.FromString(
        start[0].metadata.plugin_data.content
    ).session_start_info
    hparams = {name: value.WhichOneof("kind") for name, value in info.hparams.items()}
    assert hparams["lip/first"] == hparams["dist/inner"] == "number_value"
    assert info.hparams["lip/inner"].number_value == 1.5
    assert info.hparams["lip/shortcut"].number_value == -1  # unconstrained, as on the command line
    tags = {v.tag for v, _, _ in values}
    assert {"final/network_lipschitz", "final/sum_of_distances", "final/test_accuracy"} <= tags


def test_tensorboard_curves_have_their_bounds_and_one_gap_sign(finished):
    run_dir, summary = finished
    board = str(run_dir / "tensorboard")
    layer = [
        (v.tag, step, tf.make_ndarray(v.tensor))
        for v, step, _ in events(os.path.join(board, "layers", "block2_conv1"))
    ]
    ratios = {
        step: float(value) for tag, step, value in layer if tag == "capacity/lipschitz_over_bound"
    }
    lips = {step: float(value) for tag, step, value in layer if tag == "capacity/lipschitz"}
    assert set(ratios) == {0, 1}
    for step in ratios:
        assert ratios[step] == pytest.approx(lips[step] / 1.5, rel=1e-6)
    assert any(tag == "capacity/distance_over_bound" for tag, _, _ in layer)
    # gap/loss is test minus train, as summary.json's loss_gap
    train = {
        s: float(tf.make_ndarray(v.tensor))
        for v, s, _ in events(os.path.join(board, "train"))
        if v.tag == "epoch_loss"
    }
    test = {
        s: float(tf.make_ndarray(v.tensor))
        for v, s, _ in events(os.path.join(board, "validation"))
        if v.tag == "epoch_loss"
    }
    gaps = {
        s: float(tf.make_ndarray(v.tensor))
        for v, s, _ in events(os.path.join(board, "gaps"))
        if v.tag == "gap/loss"
    }
    for step, gap in gaps.items():
        assert gap == pytest.approx(test[step] - train[step], rel=1e-5)


def test_no_graph_tensorboard_cannot_show(finished):
    run_dir, _ = finished
    for path in glob.glob(
        str(run_dir / "tensorboard" / "**" / "events.out.tfevents.*"), recursive=True
    ):
        for event in tf.compat.v1.train.summary_iterator(path):
            assert not event.graph_def and not event.meta_graph_def, path


# --------------------------------------------- interrupted or damaged runs


def copy_run(finished, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished[0], run_dir)
    return run_dir


def test_a_rerun_writes_a_report_that_was_interrupted(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    os.remove(run_dir / "report.md")
    os.remove(run_dir / "bounds.png")
    lines = []
    train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=lines.append)
    assert (run_dir / "report.md").exists() and (run_dir / "bounds.png").exists()
    assert any("finished run" in line for line in lines)


def test_a_finished_run_without_its_initial_model_warns(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path)
    os.remove(run_dir / "model_init.keras")
    train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=quiet)
    assert "model_init.keras is missing" in capsys.readouterr().err


def test_a_run_resumed_without_its_initial_model_says_so(finished, tmp_path, capsys):
    """A run interrupted after its initial model was deleted: it resumes from
    its backup (here an empty one: from the start) and says, once, that the
    file is gone."""
    run_dir = copy_run(finished, tmp_path)
    for name in ("summary.json", "model_final.keras", "model_init.keras", "report.md"):
        os.remove(run_dir / name)
    os.makedirs(run_dir / "backup")
    lines = []
    train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=lines.append)
    assert any(line.startswith("Resuming run") for line in lines)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"warning: {run_dir / 'model_init.keras'} is missing: the run resumes with the K0 its "
        "backup holds, so its distances are measured as before, but its initial weights are gone."
    ]


def test_a_truncated_summary_is_one_clear_error(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    text = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(text[: len(text) // 2])
    with pytest.raises(
        RunError, match="summary.json is damaged.*Delete it and run the same command again"
    ):
        train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=quiet)
    # Deleted, the summary is recomputed from the final model, not by training again.
    os.remove(run_dir / "summary.json")
    lines = []
    summary = train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=lines.append)
    assert any(line.startswith("Finishing run") for line in lines)
    assert summary["epochs_this_session"] == 0 and summary["epochs"] == 2
    assert summary["test_accuracy"] == pytest.approx(finished[1]["test_accuracy"])


def test_a_damaged_backup_names_the_folder(tmp_path):
    run_dir = tmp_path / "run"
    config = RunConfig(**SMALL)
    runs.open_run(str(run_dir), config)
    os.makedirs(run_dir / "backup")
    (run_dir / "backup" / "latest.weights.h5").write_bytes(b"not an h5 file")
    (run_dir / "backup" / "training_metadata.json").write_text('{"epoch": 1')
    with pytest.raises(RunError, match=r"The backup in .*backup is damaged .* Delete that folder"):
        train_and_evaluate(config, str(run_dir), log=quiet)


def test_a_run_that_never_started_does_not_block_the_corrected_command(tmp_path):
    run_dir = tmp_path / "run"
    runs.open_run(str(run_dir), RunConfig(**SMALL).replace(lr=0.5))  # stopped before training
    assert runs.open_run(str(run_dir), RunConfig(**SMALL)) == "new"
    assert "--lr=0.05\n" in (run_dir / "flags.txt").read_text()


def test_a_started_run_with_other_flags_is_refused(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    with pytest.raises(RunError, match=r"other flags.*\n  --epochs: 2 -> 3"):
        train_and_evaluate(RunConfig(**SMALL).replace(epochs=3), str(run_dir))


def test_divergence_ends_with_the_layer_named(tmp_path):
    config = RunConfig(**SMALL).replace(lr=1e30, epochs=1)
    with pytest.raises(RunError, match=r"^LipDist: the kernel '[^']*conv1/kernel' holds NaN, inf"):
        train_and_evaluate(config, str(tmp_path / "run"), log=quiet)


def test_mock_cifar10(tmp_path):
    config = RunConfig(**SMALL).replace(
        dataset="cifar10", limit_to=-1, epochs=1, bs=32, data_dir=str(tmp_path / "tfds")
    )
    with tfds.testing.mock_data(num_examples=64):
        summary = train_and_evaluate(config, str(tmp_path / "run"), log=quiet)
    assert summary["all_constraints_hold"] and summary["epochs"] == 1
    assert (tmp_path / "run" / "report.md").exists()


def test_missing_cifar_says_how_to_prepare_it(tmp_path):
    config = RunConfig(**SMALL).replace(dataset="cifar10", data_dir=str(tmp_path / "none"))
    with pytest.raises(
        ConfigError, match="cifar10 is not prepared in .*none.*keras-capacity-data prepare cifar10"
    ):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_restarting_from_the_initial_model_keeps_k0(finished, tmp_path):
    """A run whose backup is gone restarts from its own model_init.keras,
    not from a new initialization."""
    run_dir = copy_run(finished, tmp_path)
    for name in ("summary.json", "model_final.keras", "sessions.json"):
        os.remove(run_dir / name)
    initial = keras.models.load_model(run_dir / "model_init.keras", compile=False)
    for layer, constraint in kc.binding.constrained_layers(initial):
        layer.kernel.assign(layer.kernel * 0.5)  # a K0 no seed would give
        constraint.initial_kernel.assign(layer.kernel)
    initial.save(run_dir / "model_init.keras")
    summary = train_and_evaluate(RunConfig(**SMALL), str(run_dir), log=quiet)
    final = keras.models.load_model(run_dir / "model_final.keras", compile=False)
    for (_, a), (_, b) in zip(
        kc.binding.constrained_layers(initial), kc.binding.constrained_layers(final), strict=False
    ):
        np.testing.assert_array_equal(a.initial_kernel.numpy(), b.initial_kernel.numpy())
    assert summary["all_constraints_hold"]


# ------------------------------------------------------------ the report


def test_summary_and_report_carry_the_test_error_bounds(finished):
    run_dir, summary = finished
    from keras_capacity import bounds

    assert set(summary["test_error_bounds"]) == set(bounds.BOUNDS)
    with np.load(datasets.SHAPES10_PATH) as arrays:  # the sweep's chance level reads these
        expected = np.bincount(arrays["y_test"], minlength=10).tolist()
    assert summary["test_class_counts"] == expected
    for bound in summary["test_error_bounds"].values():
        assert bound["margin"] in bounds.MARGIN_GRID and bound["delta"] == 0.05
        assert bound["vacuous"] == (bound["value"] is None or bound["value"] >= 1)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["test_error_bounds"] == summary["test_error_bounds"]
    assert report["test_error"] == pytest.approx(1 - summary["test_accuracy"])
    text = (run_dir / "report.md").read_text()
    # It leads with what the bounds say about the test error.
    assert text.index("## What the bounds say about the test error") < text.index("## Layers")
    assert "Measured test error: **" in text and "delta = 0.05" in text
    first_row = next(line for line in text.splitlines() if line.startswith("| ours_norms |"))
    assert ("(vacuous)" in first_row) == summary["test_error_bounds"]["ours_norms"]["vacuous"]


def test_the_report_margin_is_chosen_and_never_negative():
    from keras_capacity.training import report

    margins = [-3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 4.0]
    assert report.chosen_margin("0.7", margins) == (0.7, "chosen")
    gamma, text = report.chosen_margin("q50", margins)
    assert gamma == pytest.approx(0.5) and "50th percentile of the training margins" in text
    gamma, text = report.chosen_margin("q10", margins)  # the 10th percentile is negative
    assert gamma == pytest.approx(np.percentile([0.5, 1.0, 2.0, 4.0], 10)) and "positive" in text
    assert report.chosen_margin("q10", [-1.0, -2.0])[0] is None
    for bad in ("-1", "0", "q200", "qx", "abc"):
        with pytest.raises(ValueError, match="--gamma"):
            report.chosen_margin(bad, margins)


def test_bound_lines_can_be_told_apart():
    from keras_capacity import bounds
    from keras_capacity.training import report

    styles = [report.line_style(name, i) for i, name in enumerate(bounds.BOUNDS)]
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 12
    assert styles[0]["linewidth"] > max(s["linewidth"] for s in styles[2:])


def test_every_worker_s_backup_folder_exists_before_fit(tmp_path):
    """Keras's BackupAndRestore checks for its folder, then makes it without
    ``exist_ok``: a second worker making its own folder inside the chief's
    in between ended the chief's fit (seen once in the multi-worker test).
    Both folders are made before fit."""
    from keras_capacity.training import distribute

    folder = str(tmp_path / "backup")
    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    second = distribute.backup_dir(
        folder, {"cluster": workers, "task": {"type": "worker", "index": 1}}
    )
    assert second == os.path.join(folder, "worker1") and os.path.isdir(second)
    chief = distribute.backup_dir(
        folder, {"cluster": workers, "task": {"type": "worker", "index": 0}}
    )
    assert chief == folder and os.path.isdir(chief)
