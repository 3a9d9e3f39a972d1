"""train_main.py end to end: flag files, data, strategies, resuming, bad input.

Runs the program in subprocesses (as users do); the in-process tests call
its validation directly.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import app, flags

import keras_capacity as kc
import train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--dataset=shapes10", "--arch=simple_convnet6", "--n_channels=8",
         "--limit_to=256", "--bs=64", "--epochs=2", "--lr=0.05",
         "--lip=2,1.5,-1,2", "--dist=4,4,-1,2", "--proj_freq=1"]


def environment(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_main.py"), *args], cwd=ROOT,
        env=env or environment(), capture_output=True, text=True, timeout=timeout,
    )


def k0_of(path):
    model = keras.models.load_model(path, compile=False)
    return {c.layer_name: c.initial_kernel.numpy()
            for _, c in kc.binding.constrained_layers(model)}


def test_flag_file_and_bundled_data(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("\n".join(SMALL + ["--epochs=5"]) + "\n")
    run_dir = tmp_path / "run"
    result = run([f"--flagfile={flagfile}", "--epochs=2", f"--logdir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = (run_dir / "flags.txt").read_text()
    assert "--epochs=2\n" in saved and "--lip=2,1.5,-1,2\n" in saved  # later flags win
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["all_constraints_hold"] and summary["epochs_this_session"] == 2
    assert summary["images_per_s"] > 0 and summary["wall_time_s"] > 0
    layers = {row["name"]: row for row in summary["layers"]}
    assert layers["block1_conv1"]["lip_constraint"] == 2.0
    assert layers["block1_conv1"]["dist_constraint"] == 4.0
    assert "every constraint holds: yes" in result.stdout
    assert "constraints: 6/6 hold" in result.stdout  # the per-epoch line
    # The final model has the original K0, and its measured values are the summary's.
    initial, final = k0_of(run_dir / "model_init.keras"), k0_of(run_dir / "model_final.keras")
    for name in initial:
        np.testing.assert_array_equal(initial[name], final[name])
    model = keras.models.load_model(run_dir / "model_final.keras", compile=False)
    assert kc.lipschitz(model.get_layer("block2_conv1")) == pytest.approx(
        layers["block2_conv1"]["lipschitz"], rel=1e-6)
    tensorboard = run_dir / "tensorboard"
    assert {"layers", "gaps", "margins", "hparams", "train"} <= set(os.listdir(tensorboard))
    assert "block3_conv1" in os.listdir(tensorboard / "layers")
    # The capacity report: its table is the summary's, its figures are PNGs.
    report = json.loads((run_dir / "report.json").read_text())
    assert report["layers"] == summary["layers"] and len(report["bounds"]) == 12
    assert "## Bounds" in (run_dir / "report.md").read_text()
    import tensorflow as tf
    for figure in ("constraints.png", "bounds.png", "margins.png"):
        image = tf.io.decode_png(tf.io.read_file(str(run_dir / figure)))
        assert image.shape[0] > 100 and image.shape[1] > 100
    cli = subprocess.run([sys.executable, "-m", "keras_capacity.training.report", str(run_dir)], cwd=ROOT,
                         env=environment(), capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert json.loads((run_dir / "report.json").read_text())["bounds"] == report["bounds"]
    # Reproducing: the saved flag file with the same directory is a finished run.
    again = run([f"--flagfile={run_dir / 'flags.txt'}", f"--logdir={run_dir}"])
    assert again.returncode == 0 and "finished run" in again.stdout


def test_mock_cifar10_two_steps(tmp_path):
    code = (
        "import sys, tensorflow_datasets as tfds; from absl import app; import train_main\n"
        "with tfds.testing.mock_data(num_examples=64):\n"
        "    app.run(train_main.main, argv=sys.argv)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "--dataset=cifar10", "--arch=simple_convnet6",
         "--n_channels=8", "--bs=32", "--epochs=1", f"--logdir={tmp_path / 'run'}",
         "--lip=1,1,1,1", "--dist=5,5,5,5"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "64 training images" in result.stdout and "2/2" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["all_constraints_hold"]


def test_mirrored_on_two_cpu_devices(tmp_path):
    result = run(SMALL + ["--strategy=mirrored", "--cpu_devices=2", f"--logdir={tmp_path / 'r'}",
                          "--epochs=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 replica(s)" in result.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["all_constraints_hold"]


@pytest.mark.slow
def test_kill_during_epoch_2_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, os.path.join(ROOT, "train_main.py"), *SMALL, "--limit_to=2000",
            "--epochs=3", f"--logdir={run_dir}"]
    process = subprocess.Popen(args, cwd=ROOT, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        # Printed after epoch 1's backup; epoch 2 starts right away.
        if line.startswith("epoch 1:"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    result = subprocess.run(args, cwd=ROOT, env=environment(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming run" in result.stdout
    assert "epoch 2:" in result.stdout and "epoch 1:" not in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_this_session"] == 2 and summary["all_constraints_hold"]
    initial, final = k0_of(run_dir / "model_init.keras"), k0_of(run_dir / "model_final.keras")
    for name in initial:
        np.testing.assert_array_equal(initial[name], final[name])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_on_localhost(tmp_path):
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train_main.py"), *SMALL, "--epochs=1",
             "--strategy=multi_worker", f"--logdir={tmp_path / 'run'}"],
            cwd=ROOT, env=environment(TF_CONFIG=json.dumps(config)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "2 replica(s)" in outputs[0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["replicas"] == 2 and summary["all_constraints_hold"]


@pytest.fixture
def parsed():
    """Parses flags in this process for train_main.validate()."""

    def parse(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train_main.py", *args])

    yield parse
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("args,message", [
    (["--lip=1,2,3"], "--lip must have four entries"),
    (["--dist=1,-2,3,4"], "--dist: '-2' is not allowed"),
    (["--lip=1,a,3,4"], "--lip: 'a' is not a number"),
    (["--milestones=60,x"], "--milestones"),
    (["--limit_to=0"], "--limit_to"),
    (["--arch=simple_convnet6", "--bn"], "--bn"),
    (["--strategy=multi_worker"], "TF_CONFIG"),
])
def test_bad_flags_are_refused_before_training(parsed, args, message, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    parsed(*args)
    with pytest.raises(app.UsageError, match=message):
        train_main.validate()


@pytest.mark.parametrize("config", ["{not json", '{"cluster": {"worker": []}, "task": {}}',
                                    '{"cluster": {"worker": ["a:1"]}, '
                                    '"task": {"type": "worker", "index": 3}}'])
def test_malformed_tf_config(parsed, config, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", config)
    parsed("--strategy=multi_worker")
    with pytest.raises(app.UsageError, match="TF_CONFIG is malformed"):
        train_main.validate()


def test_bad_input_ends_the_program_and_writes_nothing(tmp_path):
    checks = [
        (["--dataset=mnist"], "dataset"),
        (["--optimizer=rmsprop"], "optimizer"),
        (["--strategy=tpu"], "strategy"),
        (["--proj_mode=nearest"], "proj_mode"),
        ([f"--flagfile={tmp_path / 'missing.flags'}"], "missing.flags"),
        (["--lip=1,2"], "four entries"),
        (["--strategy=mirrored", "--cpu_devices=2", "--bs=63"], "not divisible by the 2"),
    ]
    for args, message in checks:
        run_dir = tmp_path / "never"
        result = run(SMALL + args + [f"--logdir={run_dir}"])
        assert result.returncode != 0, args
        assert message in result.stderr + result.stdout, (args, result.stderr[-2000:])
        assert not run_dir.exists(), args


def test_unwritable_logdir_and_changed_flags(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run(SMALL + [f"--logdir={blocker / 'run'}"])
    assert result.returncode != 0 and "is not writable" in result.stderr
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "flags.txt").write_text("--epochs=7\n--lr=0.05\n")
    result = run(SMALL + [f"--logdir={run_dir}"])
    assert result.returncode != 0
    assert "--epochs: 7 -> 2" in result.stderr
    assert sorted(os.listdir(run_dir)) == ["flags.txt"]
