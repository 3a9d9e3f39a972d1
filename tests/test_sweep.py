"""The sweep: grids, the excess-capacity estimate, its figure, failures,
and the command killed and resumed, and spread over a chief and two
workers on 127.0.0.1."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import TINY_RUN_FLAGS, command_environment, free_port

from keras_capacity.sweep import __main__ as sweep_main
from keras_capacity.sweep import engine, grid, results
from keras_capacity.training import RunConfig, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = [*TINY_RUN_FLAGS, "--proj_mode=radial", "--proj_freq=1"]
CONFIG = RunConfig(
    dataset="shapes10",
    arch="simple_convnet6",
    n_channels=4,
    limit_to=128,
    bs=64,
    epochs=1,
    lr=0.05,
    proj_mode="radial",
    proj_freq=1,
    lip="2,1.5,-1,2",
    dist="4,4,-1,4",
)


# -------------------------------------------------------------------- grid


def test_grids_make_their_product_and_the_baseline():
    axes = grid.parse_grid(["dist.inner:1,inf,4", "lip:0.5,2"])
    assert axes[0].values == (1.0, math.inf, 4.0) and axes[1].is_scale
    trials = grid.trials(CONFIG, axes, seeds=2)
    assert len(trials) == 2 * (1 + 3 * 2)
    baseline = [t for t in trials if t.is_baseline]
    assert [t.seed for t in baseline] == [0, 1]
    assert baseline[0].config.lip == baseline[0].config.dist == (math.inf,) * 4
    point = next(t for t in trials if t.name == "dist.inner=inf_lip=x0.5_seed1")
    assert point.config.dist == (4.0, math.inf, math.inf, 4.0)
    assert point.config.lip == (1.0, 0.75, math.inf, 1.0) and point.config.seed == 1
    assert len({t.name for t in trials}) == len(trials)


@pytest.mark.parametrize(
    "specs,message",
    [
        (["depth:1,2"], "unknown name 'depth'"),
        (["dist.inner:"], "give at least one value"),
        (["dist.inner:1,,2"], "give at least one value"),
        (["dist.inner:1,two"], "'two' is not a number"),
        (["dist.inner:-2"], "must be >= 0"),
        (["lip.first:0"], "must be > 0"),
        (["lip:-0.5"], "a scale factor must be > 0"),
        (["dist.inner"], "expected NAME:V1,V2"),
        (["dist.inner:1,1"], "values repeat"),
        (["dist.inner:1", "dist.inner:2"], "names repeat"),
        (["dist:0.5", "dist.inner:2"], "overlap"),
        ([], "at least one --grid"),
    ],
)
def test_bad_grids_are_one_clear_error(specs, message):
    with pytest.raises(grid.GridError, match=message):
        grid.parse_grid(specs)


def sweep_here(argv, monkeypatch, capfd):
    """``(exit status, stdout, stderr)`` of the sweep command on ``argv``,
    run in this process through its own flag parser and main function
    (no TensorFlow import of its own), with a fresh set of absl flags in
    place of ``absl.flags.FLAGS`` for the call, no tuner settings in the
    environment, and the loggers' levels put back after it; the streams
    are captured at their file descriptors. For the refusals, which end
    before any training."""
    import logging

    from absl import logging as absl_logging

    fresh = flags.FlagValues()
    sweep_main.define_flags(fresh)
    monkeypatch.setattr(flags, "FLAGS", fresh)
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    tf_logger, verbosity = logging.getLogger("tensorflow"), absl_logging.get_verbosity()
    level = tf_logger.level
    capfd.readouterr()
    try:
        sweep_main._main(cli.parse_flags(["keras-capacity-sweep", *argv]))
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        tf_logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)
    out, err = capfd.readouterr()
    return code, out, err


def test_bad_grids_stop_the_command_before_anything_is_written(tmp_path, monkeypatch, capfd):
    code, _, stderr = sweep_here(
        [*BASE, "--grid=dist.inner:1,x", f"--workdir={tmp_path / 'sweep'}"], monkeypatch, capfd
    )
    assert code == 2
    assert stderr.strip().splitlines()[-1] == (
        "error: --grid='dist.inner:1,x': 'x' is not a number."
    )
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- analysis


def record(settings, seed, test_error, lipschitz, distances, baseline=False):
    return {
        "name": f"{settings}_{seed}",
        "settings": settings,
        "seed": seed,
        "baseline": baseline,
        "status": "done",
        "test_error": test_error,
        "train_error": test_error / 2,
        "network_lipschitz": lipschitz,
        "sum_of_distances": distances,
        "test_error_bounds": {"ours_norms": 5.0},
        "num_test": 1000,
        "error": None,
    }


def hand_made():
    """Baseline 0.10 over two seeds; dist.inner 8 within 0.10 + tolerance,
    2 just outside, 1 far outside."""
    return [
        record({}, 0, 0.09, 400.0, 200.0, baseline=True),
        record({}, 1, 0.11, 400.0, 200.0, baseline=True),
        record({"dist.inner": 1.0}, 0, 0.40, 20.0, 10.0),
        record({"dist.inner": 1.0}, 1, 0.44, 20.0, 10.0),
        record({"dist.inner": 2.0}, 0, 0.13, 60.0, 20.0),
        record({"dist.inner": 2.0}, 1, 0.12, 60.0, 20.0),
        record({"dist.inner": 8.0}, 0, 0.10, 100.0, 50.0),
        record({"dist.inner": 8.0}, 1, 0.11, 100.0, 50.0),
    ]


def test_the_excess_capacity_estimate_of_a_known_sweep():
    axes = grid.parse_grid(["dist.inner:1,2,8"])
    sweep = results.summarize({}, axes, hand_made())
    # One standard error: the binomial sqrt(0.1 * 0.9 / 2000) = 0.0067 is
    # smaller than the seeds' std/sqrt(2) = 0.01414 / 1.414 = 0.01.
    assert sweep["tolerance"] == pytest.approx(0.01)
    estimate = sweep["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] == 8.0 and estimate["test_error"] == pytest.approx(0.105)
    assert estimate["removed_lipschitz"] == pytest.approx(0.75)  # 1 - 100/400
    assert estimate["removed_distance"] == pytest.approx(0.75)  # 1 - 50/200
    # A looser tolerance admits dist.inner = 2 (mean 0.125 <= 0.10 + 0.03).
    looser = results.summarize({}, axes, hand_made(), tolerance=0.03)
    assert looser["excess_capacity"]["dist.inner"]["tightest"] == 2.0
    assert looser["excess_capacity"]["dist.inner"]["removed_distance"] == pytest.approx(0.9)
    strict = results.summarize({}, axes, hand_made(), tolerance=0.0)
    assert strict["excess_capacity"]["dist.inner"]["tightest"] is None


def test_the_figure_shows_the_numbers_of_sweep_json(tmp_path):
    axes = grid.parse_grid(["dist.inner:1,2,8"])
    sweep = results.summarize({}, axes, hand_made())
    results.write(str(tmp_path), sweep, axes)
    image = tf.io.decode_png(tf.io.read_file(str(tmp_path / "sweep.png")))
    assert image.shape[0] > 200 and image.shape[1] > 300
    saved = json.loads((tmp_path / "sweep.json").read_text())
    drawn = results.figure(sweep, axes, str(tmp_path / "again.png"))["dist.inner"]
    points = sorted(
        (p for p in saved["points"] if not p["baseline"]), key=lambda p: p["settings"]["dist.inner"]
    )
    assert drawn["test error"] == (
        [p["settings"]["dist.inner"] for p in points],
        [p["test_error"] for p in points],
    )
    assert drawn["train error"][1] == [p["train_error"] for p in points]
    assert drawn["unconstrained test error"][1][0] == pytest.approx(saved["baseline"]["test_error"])
    estimate = saved["excess_capacity"]["dist.inner"]["tightest"]
    assert drawn[f"excess-capacity estimate ({estimate:g})"][0][0] == estimate
    assert drawn["test-error bound, ours_norms"][1] == [5.0, 5.0, 5.0]


def test_a_failed_trial_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    axes = grid.parse_grid(["dist.inner:1,2"])
    trials = grid.trials(CONFIG, axes, seeds=1)
    trained = []

    def fake_training(config, run_dir, log):
        if config.dist[1] == 1.0:
            raise RuntimeError("the loss became nan")
        trained.append(run_dir)
        summary = {
            "train_accuracy": 0.9,
            "test_accuracy": 0.8,
            "train_loss": 0.3,
            "test_loss": 0.5,
            "loss_gap": 0.2,
            "accuracy_gap": 0.1,
            "network_lipschitz": 10.0,
            "sum_of_distances": 3.0,
            "num_test": 100,
            "test_error_bounds": {},
        }
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "flags.txt"), "w") as f:
            f.write("".join(f"--{k}={v}\n" for k, v in config.flag_values().items()))
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
        return summary

    monkeypatch.setattr(engine, "train_and_evaluate", fake_training)
    sweep = engine.Sweep(str(tmp_path), {}, axes, trials, log=lambda line: None)
    summary = engine.search(sweep)
    assert len(trained) == 2  # the baseline and dist.inner=2
    assert summary["failed"] == ["dist.inner=1_seed0"]
    failed = next(r for r in summary["trials"] if r["status"] == "failed")
    assert failed["error"] == "RuntimeError: the loss became nan"
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["failed"] == ["dist.inner=1_seed0"]
    assert (
        "dist.inner=1_seed0: failed (RuntimeError: the loss became nan)"
        in (tmp_path / "sweep.md").read_text()
    )
    # Run again: finished trials are read back, not trained again.
    engine.search(engine.Sweep(str(tmp_path), {}, axes, trials, log=lambda line: None))
    assert len(trained) == 2


# ---------------------------------------------------------------- commands


def sweep_command(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "keras_capacity.sweep",
        *BASE,
        "--grid=dist.inner:0.5,4",
        f"--workdir={workdir}",
        *extra,
    ]


def sessions(workdir):
    """``{trial: epochs trained in each session}`` from the run directories."""
    trials = os.path.join(workdir, "trials")
    return {
        name: [s["epochs"] for s in json.load(open(os.path.join(trials, name, "sessions.json")))]
        for name in sorted(os.listdir(trials))
    }


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The sweep of ``BASE``: one epoch (two steps) on 128 images, whose
    unconstrained baseline cannot learn (test error at chance, 0.9)."""
    workdir = tmp_path_factory.mktemp("single") / "sweep"
    result = subprocess.run(
        sweep_command(workdir),
        cwd=ROOT,
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_the_command_writes_its_results(single_process):
    workdir, result = single_process
    saved = json.loads((workdir / "sweep.json").read_text())
    assert [t["status"] for t in saved["trials"]] == ["done"] * 3
    assert saved["definition"]["grid"] == ["dist.inner:0.5,4"]
    trial = next(t for t in saved["trials"] if t["name"] == "dist.inner=4_seed0")
    summary = json.loads((workdir / "trials" / "dist.inner=4_seed0" / "summary.json").read_text())
    assert trial["test_error"] == pytest.approx(1 - summary["test_accuracy"])
    assert set(trial["test_error_bounds"]) == set(summary["test_error_bounds"])
    assert (workdir / "sweep.md").read_text().startswith("# Excess capacity")
    assert "results in" in result.stdout
    # One HParams dashboard over the trials, with numeric constraint entries.
    hparams = [
        os.path.join(workdir, "trials", name, "tensorboard", "hparams")
        for name in os.listdir(workdir / "trials")
    ]
    assert all(os.path.isdir(path) for path in hparams) and len(hparams) == 3


def test_a_baseline_that_cannot_learn_ends_with_the_reason(single_process):
    workdir, result = single_process  # exit status 0: the sweep itself did not fail
    reason = result.stdout.strip().splitlines()[-2]
    assert reason.startswith("no estimate: the unconstrained baseline did not learn: its test")
    assert reason.endswith(
        "train longer (--epochs), on more data (--limit_to), or with a larger learning rate (--lr)"
    )
    saved = json.loads((workdir / "sweep.json").read_text())
    assert saved["chance"]["test_error"] == pytest.approx(0.9)  # shapes10: 100 of each class
    assert saved["excess_capacity"]["dist.inner"]["tightest"] is None
    assert f"no estimate: {saved['excess_capacity']['dist.inner']['reason']}" == reason
    assert f"**No estimate: {saved['no_estimate']}.**" in (workdir / "sweep.md").read_text()


def test_another_definition_is_refused(single_process, monkeypatch, capfd):
    workdir, _ = single_process
    code, _, stderr = sweep_here(
        [*BASE, "--grid=dist.inner:0.5,8", f"--workdir={workdir}"], monkeypatch, capfd
    )
    assert code == 2 and "holds another sweep" in stderr
    assert "- --grid=dist.inner:0.5,4" in stderr and "+ --grid=dist.inner:0.5,8" in stderr


@pytest.mark.slow
def test_a_chief_and_two_workers_run_every_trial_once(tmp_path, single_process):
    """Started together: the workers' requests wait for the chief's oracle
    (KerasTuner's client calls wait for the server to be ready)."""
    workdir, port = tmp_path / "sweep", str(free_port())
    processes = []
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = command_environment(
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=port,
        )
        processes.append(
            subprocess.Popen(
                sweep_command(workdir),
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
    # Every trial ran exactly once, in one session, on one of the workers.
    assert sessions(workdir) == {name: [1] for name in sessions(single_process[0])}
    ran = [[line for line in o.splitlines() if line.startswith("trial ")] for o in outputs]
    assert ran[0] == [] and len(ran[1] + ran[2]) == 3  # the chief only serves the oracle
    # The same results as the single-process sweep (same settings, same seeds).
    distributed = json.loads((workdir / "sweep.json").read_text())
    single = json.loads((single_process[0] / "sweep.json").read_text())
    errors = lambda s: {t["name"]: t["test_error"] for t in s["trials"]}  # noqa: E731
    assert errors(distributed) == pytest.approx(errors(single), abs=1e-6)
    assert np.isfinite(list(errors(distributed).values())).all()
