"""The benchmarks' shared ``preact_resnet18``, built as the training program
builds it (seeded, bound, SGD with momentum), with no TensorFlow import so
that ``gpu.py`` runs on JAX alone."""

import keras

import keras_capacity as kc
from keras_capacity import models


def compiled_resnet(**constraints):
    """``preact_resnet18`` for 10 classes with ``constraints`` (none:
    unconstrained), bound and compiled."""
    keras.utils.set_random_seed(0)
    model = models.preact_resnet18(10, **constraints)
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.003, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model
