"""Measure a model this library did not train: its capacity report.

    python examples/measure_your_model.py [--out runs/measure_example] [--epochs 3]

An ordinary Keras model (Rescaling, a zero-padded stride-2 Conv2D,
BatchNorm, a dilated Conv2D, Dense; biases everywhere, no LipDist), saved
at initialization and trained with plain `model.fit` on the bundled
`shapes10` images as they come (0..255), as it would be anywhere. Then
`kc.measure` gives its capacity record: each layer's exact Lipschitz
constant on its actual input and its distance to the saved initial
weights, the network's Lipschitz bound, the bounds on the test error and
certified accuracy. The same report comes from the command line:

    keras-capacity-report --model OUT/trained.keras --init OUT/init.keras \\
        --data keras_capacity/training/datasets/shapes10.npz --inputs raw --out OUT/report
"""

import argparse
import os

import keras
import numpy as np

import keras_capacity as kc
from keras_capacity.training import data as datasets
from keras_capacity.training import report


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/measure_example")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=5000, help="training images used")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with np.load(datasets.SHAPES10_PATH) as arrays:
        train = arrays["x_train"][: args.limit], arrays["y_train"][: args.limit].astype(int)
        test = arrays["x_test"], arrays["y_test"].astype(int)

    # Trained anywhere: save the initial weights, fit, save.
    keras.utils.set_random_seed(0)
    model = plain_model()
    model.save(os.path.join(args.out, "init.keras"))
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(*train, epochs=args.epochs, batch_size=64, verbose=2)
    model.save(os.path.join(args.out, "trained.keras"))

    # Measured: the initial weights give the distances.
    record = kc.measure(model, train, test, init=os.path.join(args.out, "init.keras"))
    print(kc.format_table(record.layers))
    print(f"network Lipschitz bound {record.network_lipschitz:.4g}")
    for note in record.notes:
        print(f"- {note}")
    given = {n: b for n, b in record.test_error_bounds.items() if b is not None}
    best = min(given.values(), key=lambda b: b.value)
    print(
        f"test error {1 - record.test_accuracy:.4f}; at most {best.value:.4g} with probability "
        f"{1 - best.delta:g} by {best.name}{' (vacuous)' if best.vacuous else ''}"
    )
    print(f"certified test accuracy at l2 radius 0.1: {record.certified_accuracy[0.1]:.3f}")
    folder = os.path.join(args.out, "report")
    report.write(folder, record, f"{model.name}, trained with model.fit for {args.epochs} epochs")
    print(f"report: {os.path.join(folder, 'report.md')}")


if __name__ == "__main__":
    main()
