"""Never half-written: the capacity report interrupted at every write.

``keras_capacity.training.report.write`` writes three figures, then
``report.json``, then ``report.md``, each to a temporary name and then
renamed. Here each of those writes and renames in turn raises midway (the
writer having put half its bytes into the file, or the rename not
happening), over an empty folder and over a complete earlier report. The
folder must then hold only whole files: each byte for byte the file of an
uninterrupted report, the earlier one or the new one; nothing else (no
temporary file left); and ``report.md`` only once every other file is the
new one. A process killed outright cannot remove its temporary file; those
are named ``<file>.partial<pid>``, which no reader takes for a result.
"""

import io
import os
import shutil

import keras
import matplotlib.figure
import numpy as np
import pytest
from PIL import Image

from keras_capacity import measurement
from keras_capacity.training import report, runs

FILES = ("constraints.png", "bounds.png", "margins.png", "report.json", "report.md")


class Interrupted(Exception):
    """The failure injected into a write."""


def small_model(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 2)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="fc"),
        ]
    )


def record(seed):
    """A small model's capacity record, against another initialization
    (so that every figure is drawn); another ``seed``, other figures."""
    model, init = small_model(seed), small_model(seed + 10)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((48, 8, 8, 2)).astype(np.float32)
    y = rng.integers(0, 3, 48)
    return measurement.measure(model, (x[:32], y[:32]), (x[32:], y[32:]), init=init)


def contents(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """``(old, new)``: the folders of two uninterrupted reports."""
    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"report{seed}")
        report.write(str(folder), record(seed), f"record {seed}")
        folders.append(folder)
    return folders


def test_uninterrupted_reports_are_whole_and_differ(reports):
    old, new = (contents(folder) for folder in reports)
    assert sorted(old) == sorted(new) == sorted(FILES)
    for files in (old, new):
        for name in FILES[:3]:
            image = Image.open(io.BytesIO(files[name]))
            image.load()  # decodes every row: a truncated PNG raises
            assert image.size[0] > 300 and image.size[1] > 200
    assert all(old[name] != new[name] for name in FILES)  # so each file tells which it is


def interrupt(monkeypatch, kind, target):
    """Makes the ``target``-th write (``kind="write"``: half the bytes
    written, then the error) or rename (``kind="rename"``: the error
    instead) of the report raise :class:`Interrupted`."""
    count = {"write": 0, "rename": 0}

    def hit(what):
        count[what] += 1
        return what == kind and count[what] == target + 1

    savefig = matplotlib.figure.Figure.savefig

    def cut_savefig(figure, path, *args, **kwargs):
        savefig(figure, path, *args, **kwargs)
        if hit("write"):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise Interrupted(path)

    class CutFile(io.StringIO):
        def __init__(self, path):
            super().__init__()
            self.path = path

        def write(self, text):
            interrupted = hit("write")
            with open(self.path, "w") as f:
                f.write(text[: len(text) // 2] if interrupted else text)
            if interrupted:
                raise Interrupted(self.path)
            return len(text)

    def cut_open(path, mode="r", *args, **kwargs):
        assert mode == "w", mode
        return CutFile(path)

    replace = os.replace

    def cut_replace(source, destination):
        if hit("rename"):
            raise Interrupted(destination)
        replace(source, destination)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", cut_savefig)
    monkeypatch.setattr(runs, "open", cut_open, raising=False)
    monkeypatch.setattr(os, "replace", cut_replace)


@pytest.mark.parametrize("over", ["nothing", "an earlier report"])
@pytest.mark.parametrize("kind", ["write", "rename"])
def test_an_interrupted_report_leaves_only_whole_files(reports, tmp_path, monkeypatch, kind, over):
    old, new = (contents(folder) for folder in reports)
    newer = record(1)
    for target in range(len(FILES)):
        folder = tmp_path / f"{kind}{target}"
        if over == "nothing":
            folder.mkdir()
        else:
            shutil.copytree(reports[0], folder)
        with monkeypatch.context() as patch:
            interrupt(patch, kind, target)
            with pytest.raises(Interrupted):
                report.write(str(folder), newer, "record 1")
        found = contents(folder)
        assert set(found) <= set(FILES), (kind, target, sorted(found))  # no temporary file
        for name, data in found.items():
            assert data == new[name] or data == old.get(name), (kind, target, name)
        # The files before the interrupted one are new; it and those after are as they were.
        written = FILES[:target]
        assert [name for name in FILES if found.get(name) == new[name]] == list(written)
        if over == "nothing":
            assert sorted(found) == sorted(written)
        else:
            assert sorted(found) == sorted(FILES)
