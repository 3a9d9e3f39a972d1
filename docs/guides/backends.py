# %% [markdown]
# # Guide: backends and accelerators
#
# The library runs on Keras 3's TensorFlow backend (the default and
# primary one), on JAX and on PyTorch; the numbers are the same on all
# three (same kernels in, same projected kernels out, to float32
# precision). This guide trains
# a small constrained model data-parallel with the backend it runs under:
# TensorFlow's `MirroredStrategy`, or on JAX Keras's `DataParallel`
# distribution, through the one function the training program uses for
# both. On a machine without accelerators it splits the CPU into two
# devices, so the replicas are real. The test suite runs it on TensorFlow
# at tiny settings (`GUIDE_EPOCHS`, `GUIDE_IMAGES`); run it on JAX with
#
# ```bash
# KERAS_BACKEND=jax python docs/guides/backends.py
# ```
#
# PyTorch trains on one device (the training program refuses other
# strategies there); for its install, see [Install and
# backends](../../install/).

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

# %% [markdown]
# ## Choosing the backend
#
# Keras reads `KERAS_BACKEND` once, when it is first imported: set it in
# the environment (or in `~/.keras/keras.json`) before anything imports
# Keras. The library needs no other setting.

# %%
import os

import keras
import numpy as np

import keras_capacity as kc
from keras_capacity.training import data as datasets
from keras_capacity.training import distribute
from keras_capacity.training.config import ConfigError

EPOCHS = int(os.environ.get("GUIDE_EPOCHS", 2))
IMAGES = int(os.environ.get("GUIDE_IMAGES", 2048))
print("backend:", keras.backend.backend())

# %% [markdown]
# ## The devices
#
# With accelerators, data parallelism runs over all of them. Without, the
# CPU can be split into devices (TensorFlow's logical devices; JAX's
# `--xla_force_host_platform_device_count`), which the training program
# does for `--cpu_devices`. That has to happen before the backend starts
# its runtime; where it has already started (a notebook that trained
# before), this says so and the guide goes on with one device.

# %%
try:
    distribute.split_cpu(2)  # the CPU devices serve only where there is no accelerator
except ConfigError as error:
    print(f"staying on one CPU device: {error}")

# %% [markdown]
# ## Data parallelism
#
# `distribute.create_strategy("mirrored")` is what `--strategy=mirrored`
# runs: on TensorFlow a `tf.distribute.MirroredStrategy` over the GPUs (or
# the CPU devices), on JAX a `keras.distribution.DataParallel` over the
# accelerators (or the CPU devices). Either has `scope()` and
# `num_replicas_in_sync`. The model is built, bound and compiled inside
# the scope; every replica then runs the step on its share of the batch,
# the gradients are all-reduced across the replicas, and the constraints
# project after the optimizer's steps as they do on one device. The batch
# size is global and must divide among the replicas.

# %%
strategy = distribute.create_strategy("mirrored")
replicas = strategy.num_replicas_in_sync
kind = type(getattr(strategy, "distribution", None) or strategy).__name__
print(f"strategy: {kind} with {replicas} replica(s)")

with np.load(datasets.SHAPES10_PATH) as arrays:
    x_train = arrays["x_train"][:IMAGES].astype("float32") / 255
    y_train = arrays["y_train"][:IMAGES].astype(int)

keras.utils.set_random_seed(0)
with strategy.scope():
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            kc.CircularConv2D(
                16, 3, strides=2, use_bias=False, kernel_constraint=kc.LipDist(2.0, 8, every=5)
            ),
            keras.layers.ReLU(),
            kc.CircularConv2D(
                16, 3, strides=2, use_bias=False, kernel_constraint=kc.LipDist(1.5, 8, every=5)
            ),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, kernel_constraint=kc.LipDist(1.0, 4, every=5)),
        ]
    )
    kc.bind(model)  # before fit, on every backend (on JAX it installs the projection step)
    model.compile(
        keras.optimizers.SGD(0.05, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=32 * replicas, verbose=2)
kc.project(model)
print(kc.format_table(kc.layer_table(model)))

# %% [markdown]
# ## The training program on more devices
#
# `train_main.py` does the same from its flags: `--strategy=auto` (the
# default) takes every GPU there is, `mirrored` forces it (over
# `--cpu_devices` CPU devices where there is no accelerator), `one_device`
# uses one, and `multi_worker` is TensorFlow's `MultiWorkerMirroredStrategy`
# across machines, from `TF_CONFIG` ([The training program](../../training/)
# says more). On JAX `multi_worker` is refused: a process trains on the
# accelerators of its own machine. The commands, for the bundled data and
# for a prepared CIFAR-10:

# %%
commands = [
    "python train_main.py --flagfile=examples/demo.flags --strategy=mirrored --cpu_devices=2",
    "python train_main.py --flagfile=examples/cifar10.flags --data_dir=data/tfds  # every GPU",
    "KERAS_BACKEND=jax python train_main.py --flagfile=examples/cifar10.flags --data_dir=data/tfds",
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\' '
    "python train_main.py --flagfile=examples/cifar10.flags --data_dir=data/tfds "
    "--strategy=multi_worker",
]
print("\n".join(commands))

# %% [markdown]
# ## What each costs
#
# Only what this project has measured, with the machine it was measured
# on (`benchmarks/RESULTS.md` has each script and run):
#
# * **The constraints on TensorFlow**: five 64-channel 3x3 convolutions
#   with a Dense head, batch 128, on 2 AMD EPYC CPU cores (TensorFlow
#   2.21.0, Keras 3.15.1): a projection every 15 steps made the mean
#   training step 1.017x the unconstrained one's, a projection after every
#   step 1.096x (`constraint_overhead.py`, 2026-11-28). A later rerun on a
#   loaded machine could not resolve these ratios to better than about 10%.
# * **JAX against TensorFlow on a CPU**: one orthogonal projection of a
#   64->64 3x3 circular convolution on 32x32 took 9.6-12.7 ms on
#   TensorFlow and 16-20 ms on JAX's CPU backend when few blocks exceed the
#   bound (warm, 1.56x), 141-185 ms against 349-386 ms when every block is
#   decomposed (cold, 2.47x); 2 AMD EPYC cores, JAX 0.10, 2026-12-04
#   (`projection_backends.py`). What is left of the gap is JAX's `eigh`,
#   which uses one core where TensorFlow's uses both; the exact norms take
#   each block's largest eigenvalue by bisection on JAX's CPU, 2-4x faster
#   than its `eigvalsh`. The demo's run trained at about
#   1,900 images/s on JAX against 4,200 on TensorFlow on 2 CPU cores, the
#   same day ([Install and backends](../../install/)): on a CPU, train on
#   TensorFlow.
# * **`MirroredStrategy` and `DataParallel`**: not measured. Neither the
#   cost of the replicas' all-reduce nor the speed-up over one device has
#   a recorded number here.
# * **GPUs**: one NVIDIA H200, 2026-12-04 (`benchmarks/gpu.py`, the
#   paper's ResNet at batch 256 and the reference's settings against none;
#   `benchmarks/RESULTS.md`). On JAX, 47,300 images/s unconstrained, and
#   0.42x of that with the orthogonal projection every 15 steps, 0.50x
#   with the radial one: on a GPU the eigendecompositions are latency-bound
#   (one 512x512 block: 4.9 ms, against 0.1 ms for a product), so the
#   projections cost far more, relative to the step, than on a CPU. One
#   64->64 projection on 32x32: 4.2 ms warm, 5.9 ms cold. PyTorch: 5,160
#   images/s unconstrained, 0.66x and 0.78x constrained (its projections
#   run eagerly).
#
# Two differences on JAX that are not costs: call `kc.bind(model)` before
# `fit` (also after loading a model), since Keras's JAX trainer applies
# constraints where the model's other variables are not mapped; and JAX's
# compiled steps have no run-time assertions, so a NaN kernel reaches the
# loss (the training program stops on a non-finite loss).
