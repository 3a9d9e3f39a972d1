"""The reference README's first examples, in Keras.

    python examples/quickstart.py

A Dense and a Conv2D layer with `LipDist`: their Lipschitz constant at
initialization, after a random perturbation, and after projection, checked
empirically by searching for the input pair that is stretched most. Then
the reference's two-layer model, constrained with `constrain`.
"""

import keras
import numpy as np
import tensorflow as tf

import keras_capacity as kc


def largest_stretch(layer, input_shape, steps=200):
    """Gradient ascent on ||f(x) - f(y)|| / ||x - y||: the largest found."""
    rng = np.random.default_rng(1)
    x = tf.Variable(rng.standard_normal((1, *input_shape)), dtype=tf.float32)
    y = tf.Variable(rng.standard_normal((1, *input_shape)), dtype=tf.float32)
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build([x, y])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            ratio = tf.norm(layer(x) - layer(y)) / tf.norm(x - y)
            loss = -ratio
        optimizer.apply(tape.gradient(loss, [x, y]), [x, y])
        return ratio

    return max(float(step()) for _ in range(steps))


def show(layer, model, input_shape):
    constraint = layer.kernel_constraint
    print(
        f"{layer.name}: desired Lipschitz constant {constraint.lip:.3f}, "
        f"distance bound {constraint.dist:.1f}"
    )
    kc.bind(model)
    print(f"  Lipschitz constant at init:         {kc.lipschitz(layer):.3f}")
    rng = np.random.default_rng(0)
    kernel = layer.kernel.numpy()
    layer.kernel.assign(kernel + 0.1 * rng.standard_normal(kernel.shape))
    print(
        f"  after perturbation:                 {kc.lipschitz(layer):.3f}"
        f"  (distance {kc.distance(layer):.3f})"
    )
    kc.project(model)
    print(
        f"  after projection:                   {kc.lipschitz(layer):.3f}"
        f"  (distance {kc.distance(layer):.3f})"
    )
    print(f"  largest stretch found empirically:  {largest_stretch(layer, input_shape):.3f}")


def main():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(10, kernel_constraint=kc.LipDist(lip=0.6, dist=50))
    show(dense, keras.Sequential([keras.Input((20,)), dense]), (20,))

    conv = keras.layers.Conv2D(8, 3, padding="same", kernel_constraint=kc.LipDist(lip=0.6, dist=50))
    show(conv, keras.Sequential([keras.Input((32, 32, 3)), conv]), (32, 32, 3))

    circular = kc.CircularConv2D(
        8, 3, use_bias=False, kernel_constraint=kc.LipDist(lip=0.6, dist=1.0)
    )
    show(circular, keras.Sequential([keras.Input((32, 32, 3)), circular]), (32, 32, 3))

    plain = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
    )
    model = kc.constrain(plain, lip=1.0, dist=50)
    print("\nA two-layer model, constrained with kc.constrain(model, lip=1.0, dist=50):")
    print(kc.format_table(kc.layer_table(model)))
    print(f"network Lipschitz bound: {kc.network_lipschitz(model):.3f}")


if __name__ == "__main__":
    main()
