"""What the tests of the JAX and PyTorch backends share (`test_backends`,
`test_backend_commands`): their marks, TensorFlow processes to compare
with, and the TensorFlow results the JAX job keeps for the PyTorch job."""

import os
import pathlib
import shutil
import subprocess
import sys

import keras
import pytest
from conftest import command_environment

BACKEND = keras.backend.backend()
# The test modules' own mark: run by the JAX and PyTorch jobs only.
other_backends_only = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="the JAX and PyTorch jobs run it (make test-jax, -torch)"
)
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="JAX's own compilation and distribution")
torch_only = pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's own")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def on_tensorflow(code, *args, timeout=300):
    """Runs ``code`` in a TensorFlow-backend Python process."""
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=command_environment(KERAS_BACKEND="tensorflow"),
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# `make test` runs these tests on JAX, then on PyTorch; both compare with the
# same TensorFlow computations, which the first job keeps in the folder
# $KC_TENSORFLOW_REFERENCES (emptied by the Makefile first) for the second.
SHARED_REFERENCES = os.environ.get("KC_TENSORFLOW_REFERENCES")


def tensorflow_files(code, names, tmp_path):
    """The files ``names`` that ``code`` writes (given their paths as its
    arguments) in a TensorFlow process: from the shared folder when a job
    before this one wrote them there, else made now (and kept there)."""
    folder = pathlib.Path(SHARED_REFERENCES) if SHARED_REFERENCES else tmp_path
    paths = [folder / name for name in names]
    if all(path.exists() for path in paths):
        return paths
    made = tmp_path / "tensorflow"
    made.mkdir(exist_ok=True)
    on_tensorflow(code, *(made / name for name in names))
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in zip(names, paths, strict=True):  # whole files: copied aside, renamed
        shutil.copy(made / name, f"{path}.part")
        os.replace(f"{path}.part", path)
    return paths


# Every number agrees element-wise to the project's relative tolerance.
PARITY_RTOL = 1e-5
