"""Optimizers of the training program, with PyTorch's weight decay.

PyTorch's ``SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient before
momentum (coupled L2: the same as adding ``wd/2 ||w||^2`` to the loss).
Keras's ``weight_decay`` is decoupled instead (``w -= lr * wd * w`` after
the step, outside the momentum), which with momentum 0.9 decays about ten
times less at the same ``wd``. `SGD` and `LARS` here couple it
as PyTorch does, so the reference's ``--wd`` means the same thing.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_capacity")
class SGD(keras.optimizers.SGD):
    """Keras SGD with PyTorch's coupled weight decay ``l2``.

    The update is ``g <- g + l2 * w``, then Keras's (heavy-ball) momentum
    ``v <- m v - lr g``, ``w <- w + v``; for a constant learning rate this
    is PyTorch's ``SGD(lr, momentum=m, weight_decay=l2)`` step for step.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, l2=0.0, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        if l2 < 0:
            raise ValueError(f"SGD: l2 must be >= 0, got {l2}.")
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package="keras_capacity")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017).

    Per variable: ``g <- g + l2 * w`` (coupled weight decay, as PyTorch),
    scaled by the trust ratio ``eta ||w|| / (||g|| + l2 ||w|| + eps)``
    (1 where either norm is 0), then momentum ``v <- m v + g`` and
    ``w <- w - lr v``. The reference's LARS (lightning-flash) applies the
    trust ratio only when ``weight_decay != 0``; its ``train.py`` passes none,
    so there "lars" is plain momentum SGD. Here the ratio always applies.
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        l2=0.0,
        eta=0.001,
        epsilon=1e-8,
        name="lars",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0 <= momentum < 1 or l2 < 0 or eta <= 0:
            raise ValueError(
                f"LARS: need 0 <= momentum < 1, l2 >= 0, eta > 0; got momentum={momentum}, "
                f"l2={l2}, eta={eta}."
            )
        self.momentum, self.l2, self.eta, self.epsilon = momentum, l2, eta, epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [self.add_variable_from_reference(v, "velocity") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        l2 = ops.cast(self.l2, dtype)
        w_norm = ops.sqrt(ops.sum(ops.square(variable)))
        g_norm = ops.sqrt(ops.sum(ops.square(gradient)))
        ratio = ops.where(
            ops.logical_and(w_norm > 0, g_norm > 0),
            self.eta * w_norm / (g_norm + l2 * w_norm + self.epsilon),
            ops.ones_like(w_norm),
        )
        step = ops.multiply(ops.add(gradient, ops.multiply(l2, variable)), ratio)
        velocity = self.velocities[self._get_variable_index(variable)]
        self.assign(velocity, ops.add(ops.multiply(ops.cast(self.momentum, dtype), velocity), step))
        self.assign_sub(variable, ops.multiply(lr, velocity))

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "l2": self.l2,
            "eta": self.eta,
            "epsilon": self.epsilon,
        }


OPTIMIZERS = ("sgd", "adam", "lars", "lamb")


def create(name, learning_rate, momentum=0.9, weight_decay=0.0):
    """The training program's optimizer ``name``, as the reference builds
    it: ``sgd`` (momentum, coupled weight decay), ``adam`` and ``lamb``
    (Keras's, without weight decay or momentum, like the reference),
    ``lars`` (`LARS` with momentum and coupled weight decay)."""
    if name == "sgd":
        return SGD(learning_rate, momentum=momentum, l2=weight_decay)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate)
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, l2=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
