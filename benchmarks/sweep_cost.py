"""What a search saves: the same bracket as a dense grid and as a bisection.

    python benchmarks/sweep_cost.py [--workdir runs/sweep_cost] [--resolution 1.25]

On the bundled shapes10 data (the base flags of examples/sweep_bisect.flags
unless --flagfile names others), the bracket --bracket (dist.inner from 64
down to 0.25 by default) is measured twice by the sweep command, each in
its own work directory: as a dense grid (every value of the log grid at
--resolution, the values a bisection chooses from) and as a bisection to
the same resolution. Prints, for each, the trainings and the epochs trained
(summed from the trials' sessions.json, so a rerun that reads finished
trials back counts what was trained in that folder) and the estimate with
its bracket. Target (issue 23): the bisection reaches the same estimate,
or one within a factor --resolution of it, with at most a third of the
dense grid's epochs; the exit status is 1 when it does not.

Both sweeps are resumable: run the script again to finish them.
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_flags(path):
    """The flag file's lines without its --grid, --search and --resolution."""
    with open(path) as f:
        lines = [line.strip() for line in f]
    skip = ("--grid", "--search", "--resolution")
    return [line for line in lines if line.startswith("--") and not line.startswith(skip)]


def sweep(workdir, flags):
    """Runs (or finishes) one sweep; returns its sweep.json and its wall time."""
    started = time.time()
    command = [sys.executable, "-m", "keras_capacity.sweep", *flags, f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    with open(os.path.join(workdir, "sweep.json")) as f:
        return json.load(f), time.time() - started


def epochs_trained(workdir):
    """Trainings and epochs over every trial of a sweep's work directory."""
    trials = os.path.join(workdir, "trials")
    runs, epochs = 0, 0
    for name in sorted(os.listdir(trials)):
        path = os.path.join(trials, name, "sessions.json")
        if os.path.exists(path):
            with open(path) as f:
                trained = sum(session["epochs"] for session in json.load(f))
            runs, epochs = runs + (trained > 0), epochs + trained
    return runs, epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/sweep_cost")
    parser.add_argument("--flagfile", default=os.path.join(ROOT, "examples/sweep_bisect.flags"))
    parser.add_argument("--bracket", default="dist.inner:64,0.25")
    parser.add_argument("--resolution", type=float, default=1.25)
    args = parser.parse_args()

    from keras_capacity.sweep import grid

    bracket = grid.parse_bracket(args.bracket, "bisect")
    values = grid.log_grid(bracket, grid.check_resolution(args.resolution)).values
    base = base_flags(args.flagfile)
    dense_grid = f"{bracket.name}:{','.join(repr(v) for v in values)}"
    found = {}
    for kind, flags in (
        ("dense grid", [f"--grid={dense_grid}"]),
        (
            "bisection",
            ["--search=bisect", f"--grid={args.bracket}", f"--resolution={args.resolution!r}"],
        ),
    ):
        workdir = os.path.join(args.workdir, kind.replace(" ", "_"))
        saved, wall = sweep(workdir, base + flags)
        runs, epochs = epochs_trained(workdir)
        estimate = saved["excess_capacity"][bracket.name]
        found[kind] = (runs, epochs, estimate)
        print(
            f"{kind}: {runs} trainings, {epochs} epochs trained ({wall:.0f} s this run); "
            f"estimate {estimate['tightest']}"
            + (f", over at {estimate['over']}" if estimate.get("over") is not None else "")
            + (f" ({estimate['reason']})" if estimate["tightest"] is None else ""),
            flush=True,
        )
    dense, bisection = found["dense grid"], found["bisection"]
    share = bisection[1] / dense[1]
    a, b = dense[2]["tightest"], bisection[2]["tightest"]
    close = a is not None and b is not None and max(a, b) / min(a, b) <= args.resolution
    print(
        f"bracket {args.bracket} at resolution {args.resolution:g} ({len(values)} values): "
        f"the bisection trained {share:.1%} of the dense grid's epochs (target <= 33.3%); "
        f"estimates {a} (grid) and {b} (bisection)"
        + (f", a factor {max(a, b) / min(a, b):.3g} apart" if a and b else "")
        + f" (target: within {args.resolution:g})"
    )
    if not (close and share <= 1 / 3):
        sys.exit(1)


if __name__ == "__main__":
    main()
