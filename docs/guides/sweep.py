# %% [markdown]
# # Guide: the sweep, on one machine, on many, and with a search
#
# Excess capacity is how far a network's capacity-driving terms (each
# layer's Lipschitz constant and its (2,1) distance to initialization) can
# be constrained before its test error rises above the unconstrained
# network's. The sweep measures it: it trains the unconstrained baseline
# and constrained runs along one axis (or two), and reports the tightest
# value whose test error stays within a tolerance of the baseline's.
#
# This guide runs a bisection of the inner convolutions' distance bound on
# the bundled `shapes10` images in this process, through the same
# functions as the command `python -m keras_capacity.sweep`, then shows how
# the same sweep runs on many processes or machines and how a frontier
# searches two axes. The test suite runs it at tiny settings
# (`GUIDE_EPOCHS`, `GUIDE_IMAGES`, `GUIDE_OUT`); at its defaults it trains
# what `make sweep` trains.

# %% [markdown]
# On Colab, this cell installs the package (anywhere else it does nothing;
# see [Install and backends](../../install/)). `PACKAGE` is where pip finds
# the repository.

# %%
import importlib.util
import subprocess
import sys

PACKAGE = "git+https://github.com/OWNER/keras_capacity"  # make notebooks REPOSITORY=... sets it
if "google.colab" in sys.modules and importlib.util.find_spec("keras_capacity") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], check=True)

# %%
import json
import os
import shlex

from keras_capacity.sweep import engine, search
from keras_capacity.sweep.__main__ import claim, definition, describe
from keras_capacity.training import RunConfig

EPOCHS = int(os.environ.get("GUIDE_EPOCHS", 4))
IMAGES = int(os.environ.get("GUIDE_IMAGES", 5000))
WORKDIR = os.path.join(os.environ.get("GUIDE_OUT", "runs"), "sweep_guide")

# %% [markdown]
# ## What to sweep
#
# The base settings are those of one run of the training program (the
# flags of `train_main.py`, here as a `RunConfig`): the settings of
# `examples/sweep_bisect.flags`, a 16-channel `simple_convnet6` projected
# after every step. The axis is `--grid=NAME:VALUES`, where `NAME` is one of
# the eight constraint entries (`lip.first`, `lip.inner`, ..., `dist.inner`,
# `dist.classifier`) or `lip` / `dist` for a factor on all four entries of
# that kind. For a bisection it is a bracket, the loose end and the tight
# one.

# %%
config = RunConfig(
    dataset="shapes10",
    arch="simple_convnet6",
    n_channels=16,
    proj_mode="radial",
    proj_freq=1,
    bs=64,
    epochs=EPOCHS,
    lr=0.02,
    limit_to=IMAGES,
)
BRACKET = ["dist.inner:64,4"]
RESOLUTION = 2.5

# %% [markdown]
# ## Grid or search
#
# A grid trains every value; a bisection trains the baseline and both ends,
# then halves the bracket on a log scale until the tightest value within
# the tolerance and the loosest over it are less than a factor
# `RESOLUTION` apart. It chooses among the values of the dense grid at that
# resolution, so its answer is one of them. Nothing trains yet: `make` only
# reads the settings (a bad one is an error here, before any training).

# %%
grid_search = search.make(config, ["dist.inner:4,8,16,32,64"], seeds=1, kind="grid")
bisection = search.make(config, BRACKET, seeds=1, kind="bisect", resolution=RESOLUTION)
print("grid:     ", grid_search.describe())
print("bisection:", bisection.describe())
values = bisection.searched.values
print("candidate values:", ", ".join(f"{v:g}" for v in values))

# %% [markdown]
# With `k` workers a bisection becomes a k-section: each round trains `k`
# values inside the bracket at once, so a round takes one training's time.
# The first round once the ends are known (the loose end within the
# tolerance, the tight end over it):

# %%
last = len(values) - 1
for workers in (1, 2, 4):
    first_round = [values[i] for i in search.ksection(0, last, workers)]
    print(f"{workers} worker(s): the first round trains {first_round}")

# %% [markdown]
# ## On one machine
#
# The sweep's work directory keeps its definition (`claim` refuses a
# directory that holds another sweep) and one ordinary run directory per
# trial. `engine.search` hands the trials out through KerasTuner's oracle,
# here in this one process, and writes `sweep.json`, `sweep.md` and
# `sweep.png`. The command does the same:
#
# ```bash
# python -m keras_capacity.sweep --flagfile=examples/sweep_bisect.flags --workdir=runs/sweep_bisect
# ```

# %%
values_of_sweep = definition(config, BRACKET, 1, bisection)
claim(WORKDIR, values_of_sweep)
sweep = engine.Sweep(
    WORKDIR, values_of_sweep, bisection.axes, bisection.trials, log=print, search=bisection
)
print(f"sweep in {WORKDIR}: {bisection.describe()}")
summary = engine.search(sweep)
print(describe(summary, bisection.axes, WORKDIR))

# %% [markdown]
# The last lines are the answer: the bracket the boundary lies in and the
# estimate with its test error, or why there is none. At the test suite's
# tiny settings (one epoch on a few hundred images) the baseline learns
# nothing, and the sweep says so instead of giving an estimate: a network
# within tolerance of one that learned nothing says nothing about
# capacity. Run again, the same code reads the finished trials back
# instead of training them.
#
# `sweep.json` holds every number of `sweep.md`: each trial's errors,
# bounds and capacities, the baseline, the tolerance and the estimate.

# %%
with open(os.path.join(WORKDIR, "sweep.json")) as f:
    saved = json.load(f)
print(f"baseline test error {saved['baseline']['test_error']:.3f}, tolerance {saved['tolerance']}")
print("estimate:", json.dumps(saved["excess_capacity"]["dist.inner"], default=str)[:300])
print("files:", sorted(os.listdir(WORKDIR)))

# %% [markdown]
# ## On many processes or machines
#
# KerasTuner distributes the trials: one process, the chief, holds the
# search and serves it on `KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`;
# every other process (`KERASTUNER_TUNER_ID=tuner0`, `tuner1`, ...) asks
# it for a trial, trains it in the shared work directory, and asks again.
# The search decides from the run directories alone, so with `k` workers a
# bisection trains `k` values per round and reaches the same answer as one
# process. On one machine with four GPUs (across machines, use the chief's
# address and a shared file system for the work directory), these are the
# commands for this guide's sweep, written to a flag file:

# %%
flagfile = os.path.join(os.environ.get("GUIDE_OUT", "runs"), "sweep_guide.flags")
with open(flagfile, "w") as f:  # the base flags; the sweep's own follow on the command line
    f.writelines(f"--{name}={text}\n" for name, text in sorted(config.flag_values().items()))

command = (
    f"keras-capacity-sweep --flagfile={shlex.quote(flagfile)} --grid={BRACKET[0]} "
    f"--search=bisect --resolution={RESOLUTION} --workdir=runs/sweep_many"
)
print("export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000")
print(f"KERASTUNER_TUNER_ID=chief {command} &")
print("sleep 10   # the chief's oracle is up before the workers ask it")
for worker in range(4):
    print(f"CUDA_VISIBLE_DEVICES={worker} KERASTUNER_TUNER_ID=tuner{worker} {command} &")
print("wait       # the chief writes sweep.json, sweep.md and sweep.png at the end")

# %% [markdown]
# The test suite runs a chief and two workers this way on 127.0.0.1
# (`tests/test_sweep.py`, `tests/test_sweep_search.py`): every trial runs
# once, and the results equal a single process's. Killed and run again
# with the same commands, a sweep finishes what is left.
#
# ## Two axes: the frontier
#
# The paper's joint question, how tight the distances can be for each
# Lipschitz bound, is a frontier: one bisection of the second axis per
# value of the first. Here the axes are factors on all four entries of the
# base settings, which therefore need bounds to scale:

# %%
bounded = config.replace(lip="3,2,-1,2", dist="8,8,-1,4")
frontier = search.make(
    bounded, ["lip:1,0.5,0.25", "dist:1,0.05"], seeds=1, kind="frontier", resolution=1.5
)
print(frontier.describe())
print(f"{len(frontier.trials)} possible trials; it trains those that decide each row's boundary")

# %% [markdown]
# As a command (`sweep.png` then shows the test error of every trained
# point over both axes, the frontier, and the bounds along it):
#
# ```bash
# keras-capacity-sweep --flagfile=runs/sweep_guide.flags --lip=3,2,-1,2 --dist=8,8,-1,4 \
#     --search=frontier --grid=lip:1,0.5,0.25 --grid=dist:1,0.05 --resolution=1.5 \
#     --workdir=runs/frontier
# ```
#
# A search assumes the test error grows as a bound tightens (in
# expectation). Records that contradict it are named in `sweep.md`, and
# the looser, safe answer is given; `--seeds` trains each point with more
# seeds and decides on their mean. [The sweep](../../sweep/) describes every
# flag and file.
