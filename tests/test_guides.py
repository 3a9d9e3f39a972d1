"""Every guide under docs/guides runs to its end at tiny settings, as a
script (the form a notebook and the docs page are made from)."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDES = sorted(glob.glob(os.path.join(ROOT, "docs", "guides", "*.py")))

RUN_ALL = """
import runpy, sys, keras
for path in sys.argv[1:]:
    print(f"=== {path}", flush=True)
    runpy.run_path(path, run_name="__main__")
    keras.backend.clear_session()
"""


def test_every_guide_runs_at_tiny_settings(tmp_path):
    """One process for all of them (TensorFlow is imported once)."""
    assert len(GUIDES) >= 6
    environment = {
        **os.environ,
        "GUIDE_EPOCHS": "1",
        "GUIDE_IMAGES": "256",
        "GUIDE_OUT": str(tmp_path / "out"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN_ALL, *GUIDES],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for path in GUIDES:
        assert f"=== {path}" in result.stdout
    assert "network Lipschitz bound" in result.stdout
    assert (tmp_path / "out" / "report" / "report.md").exists()
    assert (tmp_path / "out" / "report_guide" / "bounds.png").exists()
    assert "vacuous" in result.stdout
    # backends: data parallel over the two CPU devices it split off
    assert "strategy: MirroredStrategy with 2 replica(s)" in result.stdout
    # sweep: a bisection in this process, its results, the commands for many
    assert "bisection of dist.inner between 4 and 64 on 5 values" in result.stdout
    assert (tmp_path / "out" / "sweep_guide" / "sweep.json").exists()
    assert "KERASTUNER_TUNER_ID=chief keras-capacity-sweep" in result.stdout
    # reproducing the paper: every flag file parsed and checked
    assert "7 runs at the reference's settings" in result.stdout
