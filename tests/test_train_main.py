"""The commands as users run them: train_main.py and keras-capacity-report
end to end, resuming after a kill, strategies, and one-line errors for bad
input and damaged runs; as processes where the process is what is tested
(its start, a kill, a terminal, several devices or workers), else through
the commands' own entry functions in this process."""

import contextlib
import json
import logging
import os
import pty
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from absl import flags
from absl import logging as absl_logging
from conftest import command_environment, free_port

import keras_capacity as kc
from keras_capacity.training import cli
from keras_capacity.training import flags as run_flags
from keras_capacity.training import report as report_command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--dataset=shapes10",
    "--arch=simple_convnet6",
    "--n_channels=8",
    "--limit_to=256",
    "--bs=64",
    "--epochs=2",
    "--lr=0.05",
    "--lip=2,1.5,-1,2",
    "--dist=4,4,-1,2",
    "--proj_freq=1",
]
# What TensorFlow writes to standard error when it starts, unless silenced.
STARTUP_NOISE = ("cudart_stub", "oneDNN custom operations", "absl::InitializeLog", "cuInit")


def run(args, env=None, timeout=300, program=("train_main.py",)):
    return subprocess.run(
        [sys.executable, *program, *args],
        cwd=ROOT,
        env=env or command_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def report(*args):
    return run(list(args), program=("-m", "keras_capacity.training.report"))


@contextlib.contextmanager
def logger_levels_kept():
    """Puts back TensorFlow's and absl's logger levels, which the commands
    keep to errors (``quiet_tensorflow``), after a call in this process."""
    tf_logger, verbosity = logging.getLogger("tensorflow"), absl_logging.get_verbosity()
    level = tf_logger.level
    try:
        yield
    finally:
        tf_logger.setLevel(level)
        absl_logging.set_verbosity(verbosity)


def train_here(argv, monkeypatch, capfd):
    """``(exit status, stdout, stderr)`` of train_main.py on ``argv``, run
    in this process (TensorFlow is already imported) through the program's
    own flag parser and main function, with a fresh set of absl flags in
    place of ``absl.flags.FLAGS`` for the call and the loggers' levels put
    back after it; the streams are captured at their file descriptors. For
    the cases that are not about the process itself (its start, a kill, a
    terminal): each saves a process and TensorFlow's import."""
    fresh = flags.FlagValues()
    run_flags.define_flags(fresh)
    monkeypatch.setattr(flags, "FLAGS", fresh)
    capfd.readouterr()
    try:
        with logger_levels_kept():
            cli._train_main(cli.parse_flags(["train_main.py", *argv]))
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capfd.readouterr()
    return code, out, err


def report_here(argvs, capfd):
    """``(exit status, stdout, stderr)`` of the report command's ``main``
    on each argv, in this process (its streams captured at the file
    descriptors); the command as a process is `report`'s."""
    found = []
    for argv in argvs:
        capfd.readouterr()
        try:
            with logger_levels_kept():
                code = report_command.main(argv)
        except SystemExit as stop:
            code = stop.code
        found.append((code, *capfd.readouterr()))
    return found


def k0_of(path):
    model = keras.models.load_model(path, compile=False)
    return {c.layer_name: c.initial_kernel.numpy() for _, c in kc.binding.constrained_layers(model)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """``train_main.py`` run from a flag file that a later flag overrides."""
    folder = tmp_path_factory.mktemp("cli")
    flagfile = folder / "run.flags"
    flagfile.write_text("\n".join(SMALL + ["--epochs=5"]) + "\n")
    run_dir = folder / "run"
    result = run([f"--flagfile={flagfile}", "--epochs=2", f"--logdir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_flag_file_run_end_to_end(finished_run, monkeypatch, capfd):
    run_dir, result = finished_run
    saved = (run_dir / "flags.txt").read_text()
    assert "--epochs=2\n" in saved and "--lip=2,1.5,-1,2\n" in saved  # later flags win
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["all_constraints_hold"] and summary["epochs"] == 2
    layers = {row["name"]: row for row in summary["layers"]}
    assert (
        layers["block1_conv1"]["lip_constraint"],
        layers["block1_conv1"]["dist_constraint"],
    ) == (2.0, 4.0)
    # Progress, phase by phase, and the constraint line of every epoch on its own line.
    lines = result.stdout.splitlines()
    assert any(line.startswith("epoch 2: ") and "constraints: 6/6 hold" in line for line in lines)
    for phase in (
        "final projection (15 rounds) ...",
        "evaluating on the training and test data",
        "writing the capacity report ...",
        "every constraint holds: yes",
    ):
        assert phase in result.stdout
    assert not any(noise in result.stderr for noise in STARTUP_NOISE), result.stderr[:2000]
    # The final model keeps the original K0, and its measured values are the summary's.
    initial, final = k0_of(run_dir / "model_init.keras"), k0_of(run_dir / "model_final.keras")
    for name in initial:
        np.testing.assert_array_equal(initial[name], final[name])
    model = keras.models.load_model(run_dir / "model_final.keras", compile=False)
    assert kc.lipschitz(model.get_layer("block2_conv1")) == pytest.approx(
        layers["block2_conv1"]["lipschitz"], rel=1e-6
    )
    assert {"layers", "gaps", "margins", "hparams", "train"} <= set(
        os.listdir(run_dir / "tensorboard")
    )
    # Run again from its own flag file: a finished run, not trained again.
    code, stdout, _ = train_here(
        [f"--flagfile={run_dir / 'flags.txt'}", f"--logdir={run_dir}"], monkeypatch, capfd
    )
    assert code == 0 and "is a finished run" in stdout


def test_report_command(finished_run, tmp_path, capfd):
    run_dir, _ = finished_run
    report_json = json.loads((run_dir / "report.json").read_text())
    assert report_json["layers"] == json.loads((run_dir / "summary.json").read_text())["layers"]
    import tensorflow as tf

    for figure in ("constraints.png", "bounds.png", "margins.png"):
        image = tf.io.decode_png(tf.io.read_file(str(run_dir / figure)))
        assert image.shape[0] > 100 and image.shape[1] > 100
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    os.remove(copy / "report.md")
    result = report(str(copy))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (copy / "report.md").exists()
    assert json.loads((copy / "report.json").read_text())["bounds"] == report_json["bounds"]
    at_median, bad, *helped = report_here(
        [[str(copy), "--gamma=q50"], [str(copy), "--gamma=-1"], ["--help"], ["-h"]], capfd
    )
    assert at_median[0] == 0, at_median[2][-2000:]
    assert "## Complexity bounds at gamma = " in (copy / "report.md").read_text()
    assert "50th percentile" in (copy / "report.md").read_text()
    assert bad[0] == 2 and bad[2].startswith("error: --gamma='-1' must be")
    for code, stdout, _ in helped:
        assert code == 0 and "usage: keras-capacity-report" in stdout


def damaged_copies(run_dir, tmp_path):
    """``(name, damage, expected message)`` for the report's inputs."""

    def truncate(path):
        path.write_bytes(path.read_bytes()[:200])

    def drop_keys(path):
        summary = json.loads(path.read_text())
        del summary["layers"]
        path.write_text(json.dumps(summary))

    return [
        ("summary.json", truncate, "summary.json is damaged"),
        ("summary.json", drop_keys, "summary.json lacks \\['layers'\\]"),
        ("model_final.keras", truncate, "model_final.keras is damaged"),
        (
            "model_final.keras",
            lambda p: p.write_bytes(b"garbage" * 100),
            "model_final.keras is damaged",
        ),
        ("model_final.keras", os.remove, "model_final.keras is missing"),
        ("summary.json", os.remove, "summary.json is missing: the run in .* has not finished"),
        ("flags.txt", os.remove, "is not a run directory of train_main.py"),
    ]


def test_report_on_damaged_runs_is_one_line(finished_run, tmp_path, capfd):
    import re

    run_dir, _ = finished_run
    copies, cases = [], damaged_copies(run_dir, tmp_path)
    for index, (name, damage, _) in enumerate(cases):
        copy = tmp_path / f"run{index}"
        shutil.copytree(run_dir, copy)
        os.remove(copy / "report.md")
        damage(copy / name)
        copies.append((copy, {p: os.path.getmtime(copy / p) for p in os.listdir(copy)}))
    nowhere = tmp_path / "nowhere"
    found = report_here([[str(copy)] for copy, _ in copies] + [[str(nowhere)]], capfd)
    code, _, stderr = found.pop()
    assert code == 2 and stderr.strip() == f"error: {nowhere} does not exist.", stderr[-2000:]
    assert not nowhere.exists()
    for (copy, before), (name, _, message), (code, _, stderr) in zip(
        copies, cases, found, strict=True
    ):
        assert code == 2, (name, stderr[-2000:])
        errors = [line for line in stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: "), stderr[-2000:]
        assert re.search(message, errors[0]), errors[0]
        assert {
            p: os.path.getmtime(copy / p) for p in os.listdir(copy)
        } == before  # nothing written


def test_summary_damage_ends_the_training_command_in_one_line(
    finished_run, tmp_path, monkeypatch, capfd
):
    copy = tmp_path / "run"
    shutil.copytree(finished_run[0], copy)
    (copy / "summary.json").write_text('{"train_loss": 0.')
    code, _, stderr = train_here(
        [f"--flagfile={copy / 'flags.txt'}", f"--logdir={copy}"], monkeypatch, capfd
    )
    assert code == 2
    assert stderr.strip().count("\n") == 0 and "summary.json is damaged" in stderr


BAD_INPUT = (
    (["--lip=0,1.5,-1,2"], "error: --lip entry 1 (first) must be > 0"),
    (["--seed=-1"], "error: --seed must be >= 0"),
    (["--n_channels=0"], "error: --n_channels must be >= 1"),
    (["--lr=nan"], "error: --lr must be a finite number"),
    (["--milestones=-5,-3"], "error: --milestones must be increasing epochs >= 1"),
    (["--momentum=1.5"], "error: --momentum"),
    (["--dataset=mnist"], "error: --dataset: unknown value 'mnist'"),
    (["--optimizer=rmsprop"], "error: flag --optimizer=rmsprop: value should be one of"),
    (["--epochs=abc"], "error: flag --epochs=abc: invalid literal"),
    (["--no_such_flag=3"], "error: Unknown command line flag 'no_such_flag'"),
    (
        ["--strategy=mirrored", "--cpu_devices=2", "--bs=63"],
        "error: --bs=63 is not divisible by the 2",
    ),
    (["--strategy=multi_worker"], "error: --strategy=multi_worker needs TF_CONFIG"),
    (
        ["--flagfile=/nonexistent/missing.flags"],
        "error: Unable to open flagfile: [Errno 2] No such file or directory: "
        "'/nonexistent/missing.flags'",
    ),
)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capfd):
    """The README's promise: one line, ``error: ...``, exit status 2, for
    the settings the config checks and for those absl's parser rejects;
    the first case as its own process (standard error whole, TensorFlow's
    start-up included), the others through the program's own parser and
    main function in this process (``train_here``, no TF_CONFIG)."""
    cases = [
        (SMALL + args + [f"--logdir={tmp_path / str(i)}"], m)
        for i, (args, m) in enumerate(BAD_INPUT)
    ]
    alone = run(cases[0][0], timeout=120)
    found = [(alone.returncode, alone.stdout, alone.stderr)]
    monkeypatch.delenv("TF_CONFIG", raising=False)
    found += [train_here(argv, monkeypatch, capfd) for argv, _ in cases[1:]]
    for (argv, message), (code, stdout, stderr) in zip(cases, found, strict=True):
        assert code == 2, (argv, stderr[-3000:])
        errors = [line for line in stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith(message), stderr[-3000:]
        assert not stdout.strip(), stdout[-2000:]
    assert not os.listdir(tmp_path)


def test_missing_cifar_is_one_line_within_seconds(tmp_path, monkeypatch, capfd):
    started = time.monotonic()
    code, _, stderr = train_here(
        SMALL
        + ["--dataset=cifar10", f"--data_dir={tmp_path / 'tfds'}", f"--logdir={tmp_path / 'run'}"],
        monkeypatch,
        capfd,
    )
    assert time.monotonic() - started < 30
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "cifar10 is not prepared in" in errors[0]
    assert "keras-capacity-data prepare cifar10" in errors[0]
    assert not (tmp_path / "run").exists()


def test_in_a_terminal_on_two_cpu_devices(tmp_path):
    """One run for two things that a process shows: in a terminal, the
    constraint line has its own line (after Keras's progress bar); and
    with --strategy=mirrored on two CPU devices it trains two replicas,
    every constraint held."""
    parent, child = pty.openpty()
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "train_main.py",
                *SMALL,
                "--epochs=1",
                "--strategy=mirrored",
                "--cpu_devices=2",
                f"--logdir={tmp_path / 'r'}",
            ],
            cwd=ROOT,
            env=command_environment(),
            stdout=child,
            stderr=stderr,
        )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=300)
    os.close(parent)
    text = output.decode(errors="replace").replace("\r", "\n")
    assert process.returncode == 0, text[-2000:] + (tmp_path / "stderr.txt").read_text()[-2000:]
    assert any(line.startswith("epoch 1: loss") for line in text.split("\n")), text[-2000:]
    assert "2 replica(s)" in text
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["all_constraints_hold"]


@pytest.mark.slow
def test_kill_during_epoch_2_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "train_main.py",
        *SMALL,
        "--limit_to=2000",
        "--epochs=3",
        f"--logdir={run_dir}",
    ]
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=command_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        # Printed after epoch 1's backup; epoch 2 starts right away.
        if line.startswith("epoch 1:"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    result = subprocess.run(
        args, cwd=ROOT, env=command_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming run" in result.stdout
    assert "epoch 2:" in result.stdout and "epoch 1:" not in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    # The whole run's training, over both sessions.
    assert summary["epochs_this_session"] == 2 and summary["epochs"] == 3
    assert summary["sessions"] == 2 and summary["images_per_s"] > 0
    sessions = json.loads((run_dir / "sessions.json").read_text())
    assert [s["epochs"] for s in sessions] == [1, 2]
    assert summary["train_time_s"] == pytest.approx(sum(s["train_time_s"] for s in sessions))
    assert summary["all_constraints_hold"]
    initial, final = k0_of(run_dir / "model_init.keras"), k0_of(run_dir / "model_final.keras")
    for name in initial:
        np.testing.assert_array_equal(initial[name], final[name])


@pytest.mark.slow
def test_multi_worker_on_localhost(tmp_path):
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "train_main.py",
                    *SMALL,
                    "--epochs=1",
                    "--strategy=multi_worker",
                    f"--logdir={tmp_path / 'run'}",
                ],
                cwd=ROOT,
                env=command_environment(TF_CONFIG=json.dumps(config)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "2 replica(s)" in outputs[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["all_constraints_hold"]


def test_unwritable_logdir(tmp_path, monkeypatch, capfd):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, stderr = train_here(SMALL + [f"--logdir={blocker / 'run'}"], monkeypatch, capfd)
    assert code == 2 and "is not writable" in stderr
