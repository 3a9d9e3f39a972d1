# %% [markdown]
# # Guide: constrain a Keras model, train it, read the layer table
#
# This guide is a script, a notebook and a page at once (jupytext's
# "percent" format): run it with `python docs/guides/quickstart.py`, open it
# as a notebook with `jupytext --to ipynb`, or read it here. The test suite
# runs it at tiny settings (`GUIDE_EPOCHS`, `GUIDE_IMAGES`).

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
import os

import keras
import numpy as np

import keras_capacity as kc
from keras_capacity.training import data as datasets

EPOCHS = int(os.environ.get("GUIDE_EPOCHS", 3))
IMAGES = int(os.environ.get("GUIDE_IMAGES", 5000))

# %% [markdown]
# ## The data
#
# `shapes10` ships with the package: 32x32 colour images of ten kinds of
# shapes, CIFAR-shaped, so nothing is downloaded.

# %%
with np.load(datasets.SHAPES10_PATH) as arrays:
    x_train = arrays["x_train"][:IMAGES].astype("float32") / 255
    y_train = arrays["y_train"][:IMAGES].astype(int)
    x_test = arrays["x_test"].astype("float32") / 255
    y_test = arrays["y_test"].astype(int)
print(x_train.shape, x_test.shape)

# %% [markdown]
# ## A constrained model
#
# `LipDist(lip, dist)` is a kernel constraint: after the optimizer's steps
# (every 15th here, as the reference does) it projects the kernel onto
# `{Lip(K) <= lip, ||K - K0||_{2,1} <= dist}`. `Lip` is the operator norm of
# the map the layer computes on its actual input (for a convolution its
# size, padding and strides count), and `K0` is the kernel at `bind` time.
# `CircularConv2D` pads periodically, where the norm is exact by FFT.

# %%
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((32, 32, 3)),
        kc.CircularConv2D(
            32, 3, strides=2, use_bias=False, kernel_constraint=kc.LipDist(2.0, 10, every=15)
        ),
        keras.layers.ReLU(),
        kc.CircularConv2D(
            32, 3, strides=2, use_bias=False, kernel_constraint=kc.LipDist(1.5, 10, every=15)
        ),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, kernel_constraint=kc.LipDist(1.0, 5, every=15)),
    ]
)
kc.bind(model)  # each constraint learns its layer's geometry and records K0

# %% [markdown]
# ## Training
#
# Plain `fit`: the constraints project inside the compiled train step.

# %%
model.compile(
    keras.optimizers.SGD(0.05, momentum=0.9),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=2)
kc.project(model)  # a final, exact projection

# %% [markdown]
# ## The layer table
#
# Per layer: its input size and stride, its Lipschitz bound and exact
# value, its distance bound and value, and whether both hold.

# %%
print(kc.format_table(kc.layer_table(model)))
print(f"network Lipschitz bound: {kc.network_lipschitz(model):.3f}")
print(f"test accuracy: {model.evaluate(x_test, y_test, verbose=0)[1]:.3f}")

# %% [markdown]
# Each number is exact: `kc.lipschitz(layer)` is the float64 operator norm,
# and `kc.distance(layer)` the (2,1) distance to `K0`.

# %%
for layer in model.layers:
    if kc.binding.kernel_lipdist(layer) is not None:
        print(f"{layer.name}: Lip {kc.lipschitz(layer):.4f}, distance {kc.distance(layer):.4f}")
