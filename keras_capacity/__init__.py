"""keras_capacity: measuring the excess capacity of neural networks in Keras 3.

Hard per-layer constraints on the Lipschitz constant and on the (2,1) group
norm distance to initialization (Graf et al., NeurIPS 2022), and the numbers
the Rademacher-complexity bounds are made of.
"""

from keras_capacity import _startup

if _startup.started_as_command():
    _startup.import_tensorflow_quietly()

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "keras_capacity needs the TensorFlow backend of Keras; found "
        f"KERAS_BACKEND={keras.backend.backend()!r}. Set "
        "KERAS_BACKEND=tensorflow."
    )

from keras_capacity.binding import bind, distance, lipschitz, project  # noqa: E402
from keras_capacity.constraining import constrain  # noqa: E402
from keras_capacity.constraints import LipDist  # noqa: E402
from keras_capacity.layers import (  # noqa: E402
    CircularConv2D, GroupSort, PoolingShortcut, SimplexClassifier,
)

from keras_capacity.measure import (  # noqa: E402
    format_table, layer_table, margins, network_lipschitz, spectral_complexity,
)

__all__ = [
    "LipDist", "CircularConv2D", "SimplexClassifier", "PoolingShortcut", "GroupSort",
    "bind", "project", "lipschitz", "distance", "constrain",
    "layer_table", "format_table", "network_lipschitz", "margins", "spectral_complexity",
]
__version__ = "0.1.0"
