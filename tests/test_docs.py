"""The training commands of the README and the docs pages work together."""

import os
import re
import shlex

from absl import flags

from keras_capacity.training import flags as run_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documented_commands():
    """The ``train_main.py`` command lines of the shell blocks of the README
    and of the docs pages, and of ``make demo``."""
    pages = ["README.md"] + sorted(
        os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs"))
    )
    blocks = []
    for page in pages:
        if page.endswith(".md"):
            with open(os.path.join(ROOT, page)) as f:
                blocks += re.findall(r"```bash\n(.*?)```", f.read(), re.S)
    with open(os.path.join(ROOT, "Makefile")) as f:
        demo = re.search(r"^demo:.*\n\t\$\(PYTHON\) (train_main\.py .*)$", f.read(), re.M).group(1)
    commands = [demo]
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("python train_main.py") and "--help" not in line:
                commands.append(line[len("python ") :])
    return commands


def with_user_files(command, folder):
    """The command with each ``--dataset=PATH.npz`` (a user's own file, not in
    the repository) pointing at an empty stand-in of that name under
    ``folder``: the flags check only that the file exists."""
    args = shlex.split(command)
    for i, arg in enumerate(args):
        if arg.startswith("--dataset=") and arg.endswith(".npz"):
            stand_in = folder / os.path.basename(arg[len("--dataset=") :])
            stand_in.touch()
            args[i] = f"--dataset={stand_in}"
    return args


def test_documented_commands_do_not_refuse_each_other(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    runs = {}
    for command in documented_commands():
        values = flags.FlagValues()
        run_flags.define_flags(values)
        values(with_user_files(command, tmp_path))
        config = run_flags.config_from_flags(values)
        run_dir = run_flags.run_directory(config, values)
        assert runs.setdefault(run_dir, config) == config, (
            f"{command!r} would be refused: {run_dir} holds another documented run"
        )
    assert len(runs) >= 3
