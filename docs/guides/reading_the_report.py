# %% [markdown]
# # Guide: reading the capacity report
#
# Every run of the training program ends with a capacity report in its run
# directory: `report.md` to read, `report.json` with the same numbers, and
# three figures. This guide trains a small run (as `make demo` does, with
# fewer images and epochs) and walks through what the report says. The test
# suite runs it at tiny settings (`GUIDE_EPOCHS`, `GUIDE_IMAGES`,
# `GUIDE_OUT`).

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

from keras_capacity.training import RunConfig, train_and_evaluate

EPOCHS = int(os.environ.get("GUIDE_EPOCHS", 4))
IMAGES = int(os.environ.get("GUIDE_IMAGES", 5000))
RUN = os.path.join(os.environ.get("GUIDE_OUT", "runs"), "report_guide")

# %% [markdown]
# ## A run
#
# `RunConfig` holds the flags of `train_main.py`; `train_and_evaluate` is
# the program as a function. The bounds: Lipschitz 3 for the first conv, 2
# for the others and the classifier; distance 8 to initialization (4 for
# the classifier).

# %%
config = RunConfig(
    dataset="shapes10",
    arch="simple_convnet6",
    n_channels=32,
    limit_to=IMAGES,
    epochs=EPOCHS,
    lip="3,2,-1,2",
    dist="8,8,-1,4",
    proj_freq=15,
)
summary = train_and_evaluate(config, RUN, log=print)
with open(os.path.join(RUN, "report.json")) as f:
    report = json.load(f)

# %% [markdown]
# ## What the bounds say about the test error
#
# Each bound is a Rademacher-complexity bound `R(gamma)` turned into a bound
# on the test error that holds with probability 0.95 over the training
# sample: the training ramp loss at margin `gamma`, plus twice the
# complexity, plus a confidence term, minimized over a grid of margins
# fixed in advance. A value of 1 or more is **vacuous**: an error rate is
# at most 1 anyway, so such a bound says nothing. Bounds on networks of
# this size usually are vacuous; what the paper studies is how they move
# as the constraints tighten.

# %%
print(f"measured test error: {report['test_error']:.4f}")
for name, bound in sorted(report["test_error_bounds"].items(), key=lambda b: b[1]["value"]):
    verdict = "vacuous" if bound["vacuous"] else "not vacuous"
    print(f"{name:26s} at most {bound['value']:10.4g} ({verdict}; margin {bound['margin']:.3g})")

# %% [markdown]
# The figure `bounds.png` shows the same against the margin: the complexity
# bounds on the left, the test-error bounds on the right, with the measured
# test error and the line at 1 above which they are vacuous. (This one is
# from `make demo`'s run.)
#
# ![bounds.png of make demo's run](../../images/report_bounds.png)

# %% [markdown]
# ## What drives them
#
# The bounds are products and sums of per-layer quantities: the Lipschitz
# constants (their product bounds the network's) and the (2,1) distances
# to initialization, both held by the constraints. The layer table has
# them, each exact, with its bound and whether it holds:

# %%
for layer in report["layers"]:
    print(
        f"{layer['name']:14s} Lip {layer['lipschitz']:.3f} <= {layer['lip_constraint']}, "
        f"distance {layer['distance']:.3f} <= {layer['dist_constraint']}, holds: {layer['holds']}"
    )
print(f"network Lipschitz bound: {report['network_lipschitz']:.2f}")

# %% [markdown]
# ## Margins and certified accuracy
#
# A correct prediction whose margin (the true class's score minus the best
# other score) exceeds `sqrt(2)` times the network's Lipschitz bound times
# `eps` stays correct for every input perturbation of l2 norm `eps`.
# `margins.png` shows the margins; `certified_accuracy` is the share of test
# images certified at each radius.

# %%
for radius, accuracy in report["certified_accuracy"].items():
    print(f"l2 radius {radius}: certified accuracy {accuracy:.3f}")
print(f"figures: {sorted(f for f in os.listdir(RUN) if f.endswith('.png'))}")
