"""The sweep's searches (bisection, k-section, frontier) on a stand-in for
training (``sweep_fake_training``): what they train and in what order,
what they answer and why, bad settings refused before anything runs, and
a chief with two workers on 127.0.0.1 killed and run again."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import sweep_fake_training as fake
from conftest import command_environment, free_port
from test_sweep import sweep_here

from keras_capacity.sweep import engine, grid, results, search
from keras_capacity.sweep.__main__ import describe
from keras_capacity.training import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
BRACKET = ["dist.inner:64,1"]
# log_grid of 1..64 at 1.25: 20 values, 1 * 64 ** (j / 19).
VALUES = grid.log_grid(grid.parse_bracket(BRACKET[0], "bisect"), 1.25).values


FIGURE = results.figure


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    """Without the figure that a sweep redraws after every trial, and the
    session clearing after every training: the stand-in trains in no time
    and the searches here are about what they choose (the frontier's
    figure is checked on its own)."""
    monkeypatch.setattr(results, "figure", lambda sweep, axes, path: open(path, "wb").close())
    monkeypatch.setattr(engine.keras.backend, "clear_session", lambda: None)


def first_within(boundary, values=VALUES):
    return min(v for v in values if v >= boundary)


class Trainer:
    """The stand-in, recording what it trained; ``error_of(config)`` gives
    each run's test error (default: the module's monotone one)."""

    def __init__(self, error_of=None):
        self.error_of, self.trained = error_of, []

    def __call__(self, config, run_dir, log=None):
        self.trained.append(os.path.basename(run_dir))
        return fake.fake_training(config, run_dir, error_of=self.error_of)


def make_sweep(workdir, monkeypatch, specs=BRACKET, kind="bisect", seeds=1, error_of=None):
    """A sweep of ``CONFIG`` trained by a :class:`Trainer`."""
    trainer = Trainer(error_of)
    monkeypatch.setattr(engine, "train_and_evaluate", trainer)
    found = search.make(CONFIG, specs, seeds, kind, None if kind == "grid" else 1.25)
    sweep = engine.Sweep(
        str(workdir), {}, found.axes, found.trials, log=lambda line: None, search=found
    )
    return sweep, trainer


def run_search(workdir, monkeypatch, specs=BRACKET, kind="bisect", seeds=1, error_of=None):
    """The summary, the trials trained in order, and the search."""
    sweep, trainer = make_sweep(workdir, monkeypatch, specs, kind, seeds, error_of)
    return engine.search(sweep), trainer.trained, sweep.search


# ---------------------------------------------------------------- settings


def test_the_log_grid_holds_both_ends_and_steps_below_the_resolution():
    assert len(VALUES) == 20 and VALUES[0] == 1.0 and VALUES[-1] == 64.0
    assert all(1 < b / a < 1.25 for a, b in zip(VALUES[:-1], VALUES[1:], strict=True))
    assert VALUES[1] == 1.245  # 64 ** (1 / 19), to four digits
    either = grid.log_grid(grid.parse_bracket("dist.inner:1,64", "bisect"), 1.25)
    assert either.values == VALUES
    scaled = grid.log_grid(grid.parse_bracket("lip:4,0.25", "bisect"), 2.0)
    # 16 = 2 ** 4, but neighbours must be less than a factor 2 apart: 5 steps.
    assert scaled.is_scale and scaled.values[0] == 0.25 and len(scaled.values) == 6


@pytest.mark.parametrize(
    "kind,specs,resolution,message",
    [
        ("bisect", ["dist.inner:4"], None, "exactly two values.*got 1"),
        ("bisect", ["dist.inner:1,4,16"], None, "exactly two values.*got 3"),
        ("bisect", BRACKET, 1.0, "--resolution must be > 1"),
        ("bisect", BRACKET, 0.5, "--resolution must be > 1"),
        ("bisect", BRACKET, math.nan, "--resolution must be a finite number"),
        ("bisect", ["depth:1,4"], None, "unknown name 'depth'"),
        ("bisect", ["dist.inner:0,4"], None, "finite and > 0"),
        ("bisect", ["dist.inner:inf,4"], None, "finite and > 0"),
        ("bisect", [*BRACKET, "lip:1,2"], None, "takes one --grid=NAME:LOOSE,TIGHT"),
        ("bisect", BRACKET, 1.0001, "too fine"),
        ("frontier", BRACKET, None, "takes two --grid axes"),
        ("frontier", ["lip:1,2", "dist:1,2,4"], None, "exactly two values"),
        ("frontier", ["dist:1,2", "dist.inner:1,4"], None, "overlap"),
        ("grid", BRACKET, 1.25, "--resolution applies to --search=bisect"),
    ],
)
def test_bad_search_settings_are_one_line(kind, specs, resolution, message):
    with pytest.raises(grid.GridError, match=message) as error:
        search.make(CONFIG, specs, 1, kind, resolution)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "--grid=dist.inner:1,4,16",
            "error: --grid='dist.inner:1,4,16': --search=bisect takes exactly two values, the "
            "loose and the tight end of the bracket (e.g. dist.inner:64,1); got 3.",
        ),
        # absl's own refusal, one line as the sweep's: a value outside the enum.
        ("--search=bisection", "error: flag --search=bisection: value should be one of"),
    ],
)
def test_bad_bisect_settings_stop_the_command_before_anything_is_written(
    tmp_path, setting, message, monkeypatch, capfd
):
    """The search's refusal through the command's own functions in this
    process (``sweep_here``); absl's, as a process of its own (the whole
    path from the command's start to its exit status)."""
    search_flag = "--search=bisect" if setting.startswith("--grid") else setting
    grid_flag = setting if setting.startswith("--grid") else "--grid=dist.inner:1,16"
    argv = ["--dataset=shapes10", search_flag, grid_flag, f"--workdir={tmp_path / 'sweep'}"]
    if setting.startswith("--grid"):
        code, _, stderr = sweep_here(argv, monkeypatch, capfd)
    else:
        result = subprocess.run(
            [sys.executable, "-m", "keras_capacity.sweep", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, stderr = result.returncode, result.stderr
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [stderr.strip().splitlines()[-1]]
    assert errors[0].startswith(message)
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------- bisection


def test_a_bisection_reaches_the_dense_grid_answer_with_few_trainings(tmp_path, monkeypatch):
    summary, trained, _ = run_search(tmp_path / "bisect", monkeypatch)
    boundary = first_within(8.0)  # the stand-in's test error rises below dist.inner 8
    estimate = summary["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] == boundary and estimate["search_status"] == "resolved"
    assert estimate["over"] == VALUES[VALUES.index(boundary) - 1]
    assert estimate["factor"] < 1.25 and estimate["resolution"] == 1.25
    # The baseline, both ends, then halving 19 intervals: 4 or 5 more (here 4).
    assert trained[:3] == ["baseline_seed0", "dist.inner=64_seed0", "dist.inner=1_seed0"]
    assert len(trained) == 7 == len(set(trained))
    dense_grid = [f"dist.inner:{','.join(map(str, VALUES))}"]
    dense, dense_trained, _ = run_search(tmp_path / "grid", monkeypatch, dense_grid, "grid")
    assert dense["excess_capacity"]["dist.inner"]["tightest"] == boundary
    assert len(dense_trained) == 21
    saved = json.loads((tmp_path / "bisect" / "sweep.json").read_text())
    assert saved["search"]["status"] == "finished" and saved["search"]["trained_points"] == 6
    assert saved["search"]["rows"][0]["within"] == boundary
    assert "test error grows as the bound tightens" in saved["search"]["assumption"]
    text = (tmp_path / "bisect" / "sweep.md").read_text()
    assert f"the estimate is {boundary:g}" in text and "*Assumption.*" in text
    lines = describe(summary, search.make(CONFIG, BRACKET, 1, "bisect").axes, "W").splitlines()
    assert lines[0].startswith(
        f"dist.inner: the boundary lies between dist.inner={estimate['over']:g}"
    )
    assert lines[1].startswith("bisect: trained the baseline and 6 of the 20 points of the dense")


def test_a_tight_end_within_the_tolerance_is_the_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SWEEP_BOUNDARY", "0.5")
    summary, trained, found = run_search(tmp_path, monkeypatch)
    assert len(trained) == 3  # the baseline and the two ends
    assert summary["excess_capacity"]["dist.inner"]["tightest"] == 1.0
    assert summary["search"]["rows"][0]["status"] == search.TIGHT_END
    assert "the tight end dist.inner=1 is already within the tolerance" in describe(
        summary, found.axes, "W"
    )


def test_a_loose_end_over_the_tolerance_is_no_estimate(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SWEEP_BOUNDARY", "100")
    summary, trained, found = run_search(tmp_path, monkeypatch)
    assert len(trained) == 3
    estimate = summary["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] is None and estimate["search_status"] == search.LOOSE_END
    assert estimate["reason"] == (
        "the loose end dist.inner=64 of the bracket is over the tolerance (test error 0.4 > "
        "0.1095): the boundary is looser than the bracket; give a looser end"
    )
    assert describe(summary, found.axes, "W").splitlines()[0] == (
        f"dist.inner: no estimate: {estimate['reason']}"
    )


def test_a_baseline_that_did_not_learn_stops_the_search(tmp_path, monkeypatch):
    summary, trained, found = run_search(
        tmp_path, monkeypatch, error_of=lambda config: 0.89 if math.isinf(config.dist[1]) else 0.1
    )
    assert trained == ["baseline_seed0"]  # nothing constrained is trained
    assert summary["no_estimate"].startswith("the unconstrained baseline did not learn")
    assert describe(summary, found.axes, "W").startswith("no estimate: the unconstrained")


def test_each_decision_uses_the_mean_over_the_seeds(tmp_path, monkeypatch):
    # Between 4 and 8 the seeds disagree: seed 0 within, seed 1 far over;
    # their mean (0.25) is over the tolerance, so the boundary stays at 8.
    def error_of(config):
        if config.dist[1] >= 8:
            return 0.1
        return 0.1 if config.dist[1] >= 4 and config.seed == 0 else 0.4

    summary, trained, _ = run_search(tmp_path, monkeypatch, seeds=2, error_of=error_of)
    assert summary["excess_capacity"]["dist.inner"]["tightest"] == first_within(8.0)
    assert len(trained) == 2 * 7  # every point with both seeds
    assert {p["seeds"] for p in summary["points"]} == {2}


# ---------------------------------------------------------------- k-section


def workers(sweep, names):
    """Drives the sweep's oracle as KerasTuner workers ``names`` would, all
    of them asking, then finishing their trials together, round by round.
    Returns the trial names each round handed out."""
    tuner = engine._Tuner(sweep)
    oracle, rounds, stopped = tuner.oracle, [], set()
    oracle.verbose = 0
    while len(stopped) < len(names):
        running = []
        for name in names:
            if name in stopped:
                continue
            trial = oracle.create_trial(name)
            if trial.status == "STOPPED":
                stopped.add(name)
            elif trial.status == "RUNNING":
                running.append(trial)
        rounds.append([sweep.trials[t.hyperparameters.get("trial")].name for t in running])
        for trial in running:
            record = sweep.run(trial.hyperparameters.get("trial"))
            oracle.update_trial(trial.trial_id, {"test_error": record["test_error"]})
            trial.status = "COMPLETED"
            oracle.end_trial(trial)
    return [r for r in rounds if r]


def test_two_workers_trisect_and_reach_the_single_process_answer(tmp_path, monkeypatch):
    sweep, trainer = make_sweep(tmp_path / "two", monkeypatch)
    rounds = workers(sweep, ["w0", "w1"])
    assert rounds[0] == ["baseline_seed0", "dist.inner=64_seed0"]
    assert rounds[1] == ["dist.inner=1_seed0"]  # the other worker waits
    # Then two interior values a round: 1 * 64 ** (6/19) and (12/19) first.
    assert rounds[2] == [f"dist.inner={VALUES[6]:g}_seed0", f"dist.inner={VALUES[12]:g}_seed0"]
    assert all(len(r) <= 2 for r in rounds) and len(trainer.trained) == len(set(trainer.trained))
    two = sweep.summary()
    single, _, _ = run_search(tmp_path / "one", monkeypatch)
    for key in ("tightest", "over", "factor", "search_status"):
        assert (
            two["excess_capacity"]["dist.inner"][key]
            == single["excess_capacity"]["dist.inner"][key]
        )


def test_contradicting_records_give_the_safe_looser_answer(tmp_path, monkeypatch):
    # Within the tolerance from 3 on, but the second value of the first
    # round (13.8) is unlucky: the tighter 3.7 within, the looser 13.8 over.
    unlucky = VALUES[12]

    def error_of(config):
        return 0.4 if config.dist[1] < 3 or config.dist[1] == unlucky else 0.1

    sweep, _ = make_sweep(tmp_path, monkeypatch, error_of=error_of)
    workers(sweep, ["w0", "w1"])
    summary = sweep.summary()
    estimate = summary["excess_capacity"]["dist.inner"]
    assert estimate["tightest"] == VALUES[13] and estimate["over"] == unlucky
    assert estimate["contradictions"][0]["within"] == {"dist.inner": VALUES[6]}
    assert estimate["contradictions"][0]["looser_over"][0]["settings"] == {"dist.inner": unlucky}
    results.write(str(tmp_path), summary, sweep.axes)
    text = (tmp_path / "sweep.md").read_text()
    assert "## Records that contradict each other" in text
    assert f"dist.inner={VALUES[6]:g} is within the tolerance" in text


def test_a_search_resumes_where_its_trials_stand(tmp_path, monkeypatch):
    sweep, trainer = make_sweep(tmp_path / "killed", monkeypatch)
    tuner = engine._Tuner(sweep)
    for _ in range(4):  # four trials, then the process "dies"
        trial = tuner.oracle.create_trial("tuner0")
        sweep.run(trial.hyperparameters.get("trial"))
        tuner.oracle.end_trial(trial)
    # One more begun (flags.txt written) but never finished.
    interrupted = tuner.oracle.create_trial("tuner0")
    begun = sweep.trials[interrupted.hyperparameters.get("trial")]
    os.makedirs(sweep.run_dir(begun))
    first = list(trainer.trained)
    again, trainer_again = make_sweep(tmp_path / "killed", monkeypatch)
    summary = engine.search(again)
    assert trainer_again.trained[0] == begun.name  # the interrupted trial first
    assert not set(first) & set(trainer_again.trained)  # nothing finished is trained again
    single, trained, _ = run_search(tmp_path / "one", monkeypatch)
    assert sorted(first + trainer_again.trained) == sorted(trained)
    assert summary["excess_capacity"]["dist.inner"] == single["excess_capacity"]["dist.inner"]


# ---------------------------------------------------------------- frontier


def test_a_frontier_bisects_each_row(tmp_path, monkeypatch):
    specs = ["lip:0.5,1,2", "dist:16,0.25"]
    summary, trained, found = run_search(tmp_path, monkeypatch, specs, "frontier")
    columns = found.searched.values
    rows = {
        e["row"]["lip"]: e for e in json.loads((tmp_path / "sweep.json").read_text())["frontier"]
    }
    for lip in (0.5, 1.0, 2.0):
        # dist scale f holds dist.inner to 4 f; the stand-in's boundary is
        # 8 * 1.5 / lip.inner, and lip scale l holds lip.inner to 1.5 l.
        boundary = first_within(8 / (1.5 * lip) * 1.5 / 4, columns)
        assert rows[lip]["within"] == boundary and rows[lip]["status"] == "resolved"
        assert rows[lip]["over"] == columns[columns.index(boundary) - 1]
        assert rows[lip]["network_lipschitz"] == pytest.approx(10 * 1.5 * lip)
    assert len(trained) < len(columns) * 3 / 2
    drawn = FIGURE(summary, found.axes, str(tmp_path / "sweep.png"))
    heat = drawn["heatmap"]
    assert len(heat) == 3 and len(heat[0]) == len(columns)
    assert sum(v is not None for row in heat for v in row) == len(trained) - 1
    assert drawn["tightest within the tolerance (frontier)"] == (
        [float(columns.index(rows[lip]["within"])) for lip in (0.5, 1.0, 2.0)],
        [0.0, 1.0, 2.0],
    )
    assert drawn["network Lipschitz bound"][1] == [
        rows[lip]["network_lipschitz"] for lip in (0.5, 1.0, 2.0)
    ]
    assert "## Frontier" in (tmp_path / "sweep.md").read_text()
    lines = describe(summary, found.axes, "W").splitlines()
    assert lines[0].startswith("lip=x0.5: dist: the boundary lies between dist=x")
    assert lines[3].startswith(f"frontier: trained the baseline and {len(trained) - 1} of the 60")


# ------------------------------------------------- a chief and two workers


def launch(workdir, port, log):
    """The sweep command with the stand-in for training, on ``CONFIG``: a
    chief and two workers on 127.0.0.1."""
    command = [
        sys.executable,
        os.path.join(ROOT, "tests", "sweep_fake_training.py"),
        *(f"--{name}={text}" for name, text in CONFIG.flag_values().items() if text),
        "--search=bisect",
        f"--grid={BRACKET[0]}",
        f"--workdir={workdir}",
    ]
    processes = []
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = command_environment(
            KERASTUNER_TUNER_ID=tuner_id,
            KERASTUNER_ORACLE_IP="127.0.0.1",
            KERASTUNER_ORACLE_PORT=port,
            FAKE_SWEEP_SLEEP="1.5",
            FAKE_SWEEP_LOG=str(log),
        )
        processes.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return processes


@pytest.mark.slow
def test_a_chief_and_two_workers_killed_and_run_again(tmp_path, monkeypatch):
    """The distributed search trisects (two values a round), and killed
    after that round, with trials in flight, it finishes where it stood
    (here in one process), with the single-process answer."""
    workdir, log = tmp_path / "sweep", tmp_path / "finished.log"
    processes = launch(workdir, str(free_port()), log)
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().split()) >= 5):  # past the first round
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.2)
    for process in processes:
        process.send_signal(signal.SIGKILL)
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    rounds = [line for line in outputs[0].splitlines() if line.startswith("search: ")]
    assert rounds[0].endswith(f"training {VALUES[6]:g}, {VALUES[12]:g}"), outputs[0][-3000:]
    ran = [line for output in outputs[1:] for line in output.splitlines() if "trial " in line]
    assert len(ran) >= 5 and all(line.startswith("trial ") for line in ran)
    first = log.read_text().split()
    resumed, trainer = make_sweep(workdir, monkeypatch)
    summary = engine.search(resumed)
    assert not set(first) & set(trainer.trained)  # nothing finished is trained again
    assert summary["search"]["status"] == "finished"
    single, _, _ = run_search(tmp_path / "single", monkeypatch)
    estimate, expected = summary["excess_capacity"]["dist.inner"], single["excess_capacity"]
    for key in ("tightest", "over", "factor", "search_status"):
        assert estimate[key] == expected["dist.inner"][key]
