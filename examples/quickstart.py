"""The reference README's first examples, in Keras.

    python examples/quickstart.py

A Dense and a Conv2D layer with `LipDist`: their Lipschitz constant at
initialization, after a random perturbation, and after projection.
"""

import numpy as np
import keras

import keras_capacity as kc


def show(layer, model):
    constraint = layer.kernel_constraint
    print(f"{layer.name}: desired Lipschitz constant {constraint.lip:.3f}, "
          f"distance bound {constraint.dist:.1f}")
    kc.bind(model)
    print(f"  Lipschitz constant at init:         {kc.lipschitz(layer):.3f}")
    rng = np.random.default_rng(0)
    kernel = layer.kernel.numpy()
    layer.kernel.assign(kernel + 0.1 * rng.standard_normal(kernel.shape))
    print(f"  after perturbation:                 {kc.lipschitz(layer):.3f}"
          f"  (distance {kc.distance(layer):.3f})")
    kc.project(model)
    print(f"  after projection:                   {kc.lipschitz(layer):.3f}"
          f"  (distance {kc.distance(layer):.3f})")


def main():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(10, kernel_constraint=kc.LipDist(lip=0.6, dist=50))
    show(dense, keras.Sequential([keras.Input((20,)), dense]))

    conv = keras.layers.Conv2D(8, 3, padding="same",
                               kernel_constraint=kc.LipDist(lip=0.6, dist=50))
    show(conv, keras.Sequential([keras.Input((32, 32, 3)), conv]))

    circular = kc.CircularConv2D(8, 3, use_bias=False,
                                 kernel_constraint=kc.LipDist(lip=0.6, dist=1.0))
    show(circular, keras.Sequential([keras.Input((32, 32, 3)), circular]))


if __name__ == "__main__":
    main()
