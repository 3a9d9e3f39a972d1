"""A stand-in for training, for the tests of how a sweep chooses and hands
out its trials (its search, KerasTuner's workers, a kill and a resume),
which real trainings would make minutes long.

``fake_training`` writes a run directory as the training program does
(``flags.txt`` first, ``summary.json`` last, after ``FAKE_SWEEP_SLEEP``
seconds), with a test error that grows as the bound tightens: 0.10 where
``dist.inner`` is at least the boundary, 0.40 below it. The boundary is
``FAKE_SWEEP_BOUNDARY`` (8), scaled by ``1.5 / lip.inner`` where the inner
convolutions have a Lipschitz bound, so a looser Lipschitz bound lets the
distance go tighter (a frontier). Every finished trial adds its name to
``FAKE_SWEEP_LOG``, if set.

Run as a program, it is the sweep command with this stand-in:
``python tests/sweep_fake_training.py --grid=... --workdir=...``.
"""

import json
import math
import os
import sys
import time

TEST_COUNTS = [100] * 10  # ten classes of 100 test images: chance level 0.9


def boundary(config):
    base = float(os.environ.get("FAKE_SWEEP_BOUNDARY", "8"))
    lip = config.lip[1]
    return base * 1.5 / lip if math.isfinite(lip) else base


def test_error(config):
    return 0.10 if config.dist[1] >= boundary(config) else 0.40


def fake_training(config, run_dir, log=None, error_of=None):
    """Writes and returns the summary of a run that did not train."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "flags.txt"), "w") as f:
        f.write("".join(f"--{k}={v}\n" for k, v in config.flag_values().items()))
    time.sleep(float(os.environ.get("FAKE_SWEEP_SLEEP", "0")))
    error = (error_of or test_error)(config)
    lip, dist = config.lip[1], config.dist[1]
    summary = {
        "train_accuracy": 1 - error / 2,
        "test_accuracy": 1 - error,
        "train_loss": error,
        "test_loss": 2 * error,
        "loss_gap": error,
        "accuracy_gap": error / 2,
        "network_lipschitz": 10.0 * (lip if math.isfinite(lip) else 8.0),
        "sum_of_distances": dist if math.isfinite(dist) else 64.0,
        "num_test": sum(TEST_COUNTS),
        "test_class_counts": TEST_COUNTS,
        "test_error_bounds": {"ours_norms": {"value": 5.0}},
        "epochs": config.epochs,
        "train_time_s": 0.0,
    }
    path = os.path.join(run_dir, "summary.json")
    with open(path + ".partial", "w") as f:
        json.dump(summary, f)
    os.replace(path + ".partial", path)  # whole or not at all, as the training program's
    if os.environ.get("FAKE_SWEEP_LOG"):
        with open(os.environ["FAKE_SWEEP_LOG"], "a") as f:
            f.write(os.path.basename(run_dir) + "\n")
    return summary


if __name__ == "__main__":
    from keras_capacity.sweep import __main__ as command
    from keras_capacity.sweep import engine

    engine.train_and_evaluate = fake_training
    sys.exit(command.main())
