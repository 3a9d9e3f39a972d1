"""keras_capacity: measuring the excess capacity of neural networks in Keras 3.

Hard per-layer constraints on the Lipschitz constant and on the (2,1) group
norm distance to initialization (Graf et al., NeurIPS 2022), and the numbers
the Rademacher-complexity bounds are made of.
"""

from keras_capacity import _startup

if _startup.started_as_command():
    _startup.import_tensorflow_quietly()

from keras_capacity import backend  # noqa: F401  (refuses a backend it does not support)
from keras_capacity.binding import bind, distance, lipschitz, project
from keras_capacity.constraints import LipDist
from keras_capacity.layers import (
    CircularConv2D,
    GroupSort,
    PoolingShortcut,
    SimplexClassifier,
)
from keras_capacity.measurement import CapacityRecord, measure
from keras_capacity.network import (
    format_table,
    layer_table,
    margins,
    network_lipschitz,
    spectral_complexity,
)
from keras_capacity.reference_checkpoints import from_reference
from keras_capacity.retrofit import constrain

__all__ = [
    "LipDist",
    "CircularConv2D",
    "SimplexClassifier",
    "PoolingShortcut",
    "GroupSort",
    "bind",
    "project",
    "lipschitz",
    "distance",
    "constrain",
    "from_reference",
    "measure",
    "CapacityRecord",
    "layer_table",
    "format_table",
    "network_lipschitz",
    "margins",
    "spectral_complexity",
]
__version__ = "0.1.0"
