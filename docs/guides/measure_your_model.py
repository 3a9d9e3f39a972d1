# %% [markdown]
# # Guide: measure a model trained elsewhere
#
# A model this library did not train: an ordinary Keras model
# (`Rescaling`, a zero-padded stride-2 `Conv2D`, BatchNorm, a dilated
# `Conv2D`, `Dense`; biases everywhere, no `LipDist`), saved at
# initialization and trained with plain `model.fit`, as it would be
# anywhere. `kc.measure` then gives its capacity record: each layer's exact
# Lipschitz constant on its actual input and its distance to the saved
# initial weights, the network's Lipschitz bound, the bounds on the test
# error and the certified accuracy. The test suite runs this guide at tiny
# settings (`GUIDE_EPOCHS`, `GUIDE_IMAGES`, `GUIDE_OUT`).

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
from keras_capacity.training import report

EPOCHS = int(os.environ.get("GUIDE_EPOCHS", 3))
IMAGES = int(os.environ.get("GUIDE_IMAGES", 5000))
OUT = os.environ.get("GUIDE_OUT", "runs/measure_example")
os.makedirs(OUT, exist_ok=True)

# %% [markdown]
# ## A model trained elsewhere
#
# The bundled `shapes10` images as they come (0..255); the model rescales
# them itself.

# %%
with np.load(datasets.SHAPES10_PATH) as arrays:
    train = arrays["x_train"][:IMAGES], arrays["y_train"][:IMAGES].astype(int)
    test = arrays["x_test"], arrays["y_test"].astype(int)


def plain_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="conv1")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="valid", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(32, 3, dilation_rate=2, padding="same", name="conv3")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


keras.utils.set_random_seed(0)
model = plain_model()
model.save(os.path.join(OUT, "init.keras"))  # the initial weights give the distances
model.compile(
    keras.optimizers.Adam(1e-3),
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(*train, epochs=EPOCHS, batch_size=64, verbose=2)
model.save(os.path.join(OUT, "trained.keras"))

# %% [markdown]
# ## Its capacity record
#
# Without `init`, every distance would be *unknown* (never 0), and the
# bounds that need one would say so.

# %%
record = kc.measure(model, train, test, init=os.path.join(OUT, "init.keras"))
print(kc.format_table(record.layers))
print(f"network Lipschitz bound {record.network_lipschitz:.4g}")
for note in record.notes:
    print(f"- {note}")

# %% [markdown]
# The best test-error bound, at its best margin, and the accuracy certified
# against every perturbation of l2 norm 0.1:

# %%
given = {n: b for n, b in record.test_error_bounds.items() if b is not None}
best = min(given.values(), key=lambda b: b.value)
print(
    f"test error {1 - record.test_accuracy:.4f}; at most {best.value:.4g} with probability "
    f"{1 - best.delta:g} by {best.name}{' (vacuous)' if best.vacuous else ''}"
)
print(f"certified test accuracy at l2 radius 0.1: {record.certified_accuracy[0.1]:.3f}")

# %% [markdown]
# ## The report
#
# The same record as a report with figures. From the command line:
#
# ```bash
# keras-capacity-report --model OUT/trained.keras --init OUT/init.keras \
#     --data keras_capacity/training/datasets/shapes10.npz --inputs raw --out OUT/report
# ```

# %%
folder = os.path.join(OUT, "report")
report.write(folder, record, f"{model.name}, trained with model.fit for {EPOCHS} epochs")
print(f"report: {os.path.join(folder, 'report.md')}")
