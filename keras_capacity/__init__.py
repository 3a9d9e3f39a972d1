"""keras_capacity: measuring the excess capacity of neural networks in Keras 3.

Hard per-layer constraints on the Lipschitz constant and on the (2,1) group
norm distance to initialization (Graf et al., NeurIPS 2022), and the numbers
the Rademacher-complexity bounds are made of.
"""

import keras

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_capacity needs the TensorFlow backend of Keras; found "
        f"KERAS_BACKEND={keras.backend.backend()!r}. Set "
        "KERAS_BACKEND=tensorflow."
    )

from keras_capacity.binding import bind, distance, lipschitz, project  # noqa: E402
from keras_capacity.constraints import LipDist  # noqa: E402
from keras_capacity.layers import CircularConv2D, SimplexClassifier  # noqa: E402

__all__ = [
    "LipDist", "CircularConv2D", "SimplexClassifier",
    "bind", "project", "lipschitz", "distance",
]
__version__ = "0.1.0"
