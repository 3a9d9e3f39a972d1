"""``LipDist``: hard constraints on a layer's Lipschitz constant and on the
(2,1) distance of its kernel to initialization (SPEC §2-3).

The constraint keeps state (``K0``, the step count, its estimator's state),
decides by the step count whether a step projects, and serializes; the
projections are pure functions (:func:`keras_capacity.radial.project`,
:func:`keras_capacity.orthogonal.project`), and ``Lip(K)`` for the radial
one comes from an estimator chosen when the constraint is bound
(:mod:`keras_capacity.lipschitz_estimators`: exact by FFT for circular
convolutions, tracked by warm-started subspace iteration otherwise).

**Tolerances.** Every kernel the constraint returns has distance
``<= dist * (1 + 1e-5)`` (float32 rounding) and Lipschitz constant
``<= lip * (1 + 1e-3)``: exactly so for projections made now
(:meth:`LipDist.project`), for circular convolutions and for
``mode="orthogonal"``; where the estimate is tracked, the train step's bound
rests on it (``bind`` starts it from the converged top singular vectors).
An optimizer step that lifts a direction far above the tracked ones makes
the estimate lag until later projections catch up.

**State.** ``LipDist`` is also a Keras layer (with no trainable weights)
tracked by the layer it constrains: ``K0``, the step count and the
estimator's state are saved by ``model.save``, ``save_weights`` and
``keras.callbacks.BackupAndRestore``, and restored by ``load_model`` and
``load_weights``, so a loaded model keeps measuring from the original
``K0``. They appear in ``model.summary()`` as non-trainable parameters.

**Non-finite kernels** (NaN, inf, or values whose squares overflow) end the
step with an ``InvalidArgumentError`` naming the variable, instead of being
projected. (XLA drops such run-time checks; under ``jit_compile=True`` the
NaN reaches the loss instead.)
"""

import math

import keras
import numpy as np
from keras import ops

from keras_capacity import (
    backend,
    constraint_values,
    exact_norms,
    fourier,
    lipschitz_estimators,
    operators,
    orthogonal,
    radial,
)

MODES = ("radial", "orthogonal")
# What the constraint guarantees for every kernel it returns (relative).
LIPSCHITZ_TOLERANCE = 1e-3
DISTANCE_TOLERANCE = 1e-5


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"LipDist: `{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_capacity")
class LipDist(keras.constraints.Constraint, keras.layers.Layer):
    """Constrains a kernel's Lipschitz constant and its distance to ``K0``.

    Use it as the ``kernel_constraint`` of ``keras.layers.Dense``,
    ``keras.layers.Conv2D`` (any padding, strides or dilation) or
    :class:`keras_capacity.CircularConv2D`, then call
    :func:`keras_capacity.bind` once the model is built:

    >>> layer = keras.layers.Dense(10, kernel_constraint=LipDist(0.6, 50))
    >>> model = keras.Sequential([keras.Input((20,)), layer])
    >>> keras_capacity.bind(model)

    After every ``every``-th optimizer step the kernel ``K`` is projected onto
    ``{K : Lip(K) <= lip, ||K - K0||_{2,1} <= dist}``, ``Lip(K)`` being the
    operator norm of the map the layer computes on its actual input (for a
    convolution: its ``H x W`` input, padding, strides and dilation).
    ``K0`` is the kernel at :func:`keras_capacity.bind` time, scaled down to
    ``lip`` if it was above. ``inf`` (or ``None``) switches a bound off;
    ``dist=0`` freezes the kernel at ``K0``.

    **Two ways to project.** Inside the compiled train step Keras calls the
    constraint after each optimizer step: it counts steps and projects on
    every ``every``-th with the in-graph estimate. :meth:`project` (and
    :func:`keras_capacity.project`, or a call outside the train step)
    projects now, exactly, with the converged float64 ``Lip(K)``.

    Args:
        lip: the Lipschitz bound, ``> 0``.
        dist: the (2,1) distance bound, ``>= 0``.
        mode: ``"radial"`` (rescale ``K``) or ``"orthogonal"`` (the nearest
            kernel: singular-value clipping for Dense, per-frequency clipping
            for ``CircularConv2D``; refused at ``bind`` for zero padding).
        n_iter: alternating rounds per projection (with both constraints).
        every: project on every ``every``-th optimizer step of the train step.
    """

    def __init__(
        self,
        lip: float | None = math.inf,
        dist: float | None = math.inf,
        *,
        mode: str = "radial",
        n_iter: int = 1,
        every: int = 1,
    ):
        keras.layers.Layer.__init__(self, trainable=False)
        self.lip = constraint_values.check_bound(lip, constraint_values.LIPSCHITZ, "LipDist: `lip`")
        self.dist = constraint_values.check_bound(
            dist, constraint_values.DISTANCE, "LipDist: `dist`"
        )
        if mode not in MODES:
            raise ValueError(f"LipDist: unknown mode {mode!r}; expected one of {MODES}.")
        self.mode = mode
        self.n_iter = _positive_int("n_iter", n_iter)
        self.every = _positive_int("every", every)
        self.geometry = None
        self.kernel_shape = None
        self.layer_name = None
        self.estimator = None
        self.estimator_state = ()
        self.projects_in_model_step = False

    @property
    def has_lipschitz(self):
        return math.isfinite(self.lip)

    @property
    def has_distance(self):
        return math.isfinite(self.dist)

    @property
    def tracks_directions(self):
        """Whether the train step estimates ``Lip(K)`` by tracked subspace
        iteration (the radial mode, where no exact in-graph norm applies)."""
        return isinstance(self.estimator, lipschitz_estimators.TrackedSubspace)

    @property
    def is_bound(self):
        """Whether the state (``K0``, ...) exists and holds real values."""
        return self.geometry is not None and bool(backend.eager_value(self.initialized))

    # ------------------------------------------------------------------ state

    def create_state(self, kernel_shape, geometry, dtype="float32"):
        """Creates the state variables for a kernel acting as ``geometry``
        and chooses the estimator; called by :func:`keras_capacity.bind` and
        by deserialization (the values are zero until ``bind`` or weight
        loading fills them)."""
        kernel_shape = tuple(int(d) for d in kernel_shape)
        if self.geometry is not None:
            if (geometry, kernel_shape) != (self.geometry, self.kernel_shape):
                raise ValueError(
                    f"LipDist on {self.layer_name!r} is already bound to a kernel "
                    f"{self.kernel_shape} acting as {self.geometry}; got {kernel_shape} acting "
                    f"as {geometry}. Give every layer its own LipDist."
                )
            return
        if self.mode == "orthogonal":
            fourier.check_embeddable(
                geometry, kernel_shape, f"LipDist on {self.layer_name or 'a kernel'!r}"
            )
        self.geometry, self.kernel_shape = geometry, kernel_shape
        state = dict(trainable=False, aggregation="only_first_replica", initializer="zeros")
        self.initial_kernel = self.add_weight(
            shape=kernel_shape, dtype=dtype, name="initial_kernel", **state
        )
        if self.has_lipschitz and self.mode == "radial":
            self.estimator = lipschitz_estimators.choose(geometry, kernel_shape)
            self.estimator_state = tuple(
                self.add_weight(shape=shape, dtype=dtype, name=name, **state)
                for name, shape in self.estimator.state_shapes().items()
            )
        self.steps = self.add_weight(shape=(), dtype="int32", name="steps", **state)
        self.initialized = self.add_weight(shape=(), dtype="int32", name="initialized", **state)

    @property
    def power_vectors(self):
        """The tracked singular directions (where the estimate is tracked)."""
        if not self.tracks_directions:
            raise AttributeError("power_vectors: this LipDist tracks no directions.")
        return self.estimator_state[0]

    def initialize(self, kernel_variable):
        """Rescales the kernel to ``lip`` if above (exact float64 norm) and
        records it as ``K0``; starts the estimator's state. Restored state
        (after loading weights) is kept as it is."""
        if self.is_bound:
            return
        kernel = ops.convert_to_numpy(kernel_variable)
        if self.has_lipschitz:
            if self.estimator is None:
                sigma = exact_norms.spectral_norm(kernel, self.geometry)
            else:
                sigma, state = self.estimator.exact(kernel, ())
                sigma = float(sigma)
                self._store(state)
            if sigma > self.lip:
                kernel = (kernel * (self.lip / sigma)).astype(kernel.dtype)
                kernel_variable.assign(kernel)
        self.initial_kernel.assign(kernel)
        self.steps.assign(0)
        self.initialized.assign(1)

    def _store(self, state):
        for variable, value in zip(self.estimator_state, state, strict=True):
            variable.assign(value)

    def _require_bound(self, w):
        where = getattr(w, "path", None) or self.layer_name or "a kernel"
        # Where the model's train step projects, bind checked this already
        # (and during fit the state is not readable outside the step).
        if not self.projects_in_model_step and not self.is_bound:
            raise ValueError(
                f"{self!r} on {where!r} is not bound to its layer. Call "
                "`keras_capacity.bind(model)` after building the model and "
                "before training (for a subclassed model, "
                "`keras_capacity.bind(model, input_shape=...)`)."
            )
        if tuple(w.shape) != self.kernel_shape:
            raise ValueError(
                f"{self!r} is bound to a kernel of shape {self.kernel_shape}, "
                f"got {tuple(w.shape)} ({where!r})."
            )
        return where

    def _checked(self, w):
        """``w``, once its squared norm is checked to be finite: NaN, inf, or
        values whose products overflow (which would break the norm's Gram
        matrices) end training with a message naming the kernel."""
        where = self._require_bound(w)
        w = ops.convert_to_tensor(w)
        return backend.assert_finite(
            w,
            ops.sum(ops.square(w)),
            f"LipDist: the kernel {where!r} holds NaN, inf or values too large to square "
            "before projection (diverging training?).",
        )

    # ------------------------------------------------------------- projection

    def _projected(self, kernel, state, n_iter, lipschitz):
        """``(projected kernel, estimator state)``, with ``Lip(K)`` from
        ``lipschitz(kernel, state) -> (sigma, state)``; pure."""
        k0 = ops.convert_to_tensor(self.initial_kernel)
        if self.dist == 0:
            return k0, state
        if self.mode == "orthogonal":
            return orthogonal.project(kernel, k0, self.lip, self.dist, self.geometry, n_iter), state
        return radial.project(kernel, k0, self.lip, self.dist, n_iter, lipschitz, state)

    def project(self, kernel, n_iter: int | None = None):
        """Projects ``kernel`` now, exactly (``Lip(K)`` converged in float64),
        with ``n_iter`` rounds (default: the constraint's own); keeps the
        estimator's state for the train step."""
        kernel = self._checked(kernel)
        n_iter = self.n_iter if n_iter is None else _positive_int("n_iter", n_iter)

        state = tuple(ops.convert_to_numpy(v) for v in self.estimator_state)
        exact = self.estimator.exact if self.estimator else None
        kernel, state = self._projected(kernel, state, n_iter, exact)
        self._store(state)
        return kernel

    def train_step_projection(self, w):
        """The optimizer's hook inside the compiled train step: counts the
        step and, on every ``every``-th, projects with the in-graph estimate."""
        self._require_bound(w)
        self.steps.assign_add(1)
        step = ops.convert_to_tensor(self.steps)
        state = tuple(ops.convert_to_tensor(v) for v in self.estimator_state)

        def projected():
            estimate = lambda value, state: self.estimator.in_graph(value, state, step)  # noqa: E731
            return self._projected(self._checked(w), state, self.n_iter, estimate)

        if self.every == 1:
            kernel, state = projected()
        else:  # only the steps that project pay for the check and the estimate
            kernel, state = ops.cond(
                ops.equal(step % self.every, 0),
                projected,
                lambda: (ops.convert_to_tensor(w), state),
            )
        # Outside the cond: under MirroredStrategy this assignment is a
        # synchronization point, which control flow may not contain.
        self._store(state)
        return kernel

    def __call__(self, w):
        if not backend.inside_compiled_step(w):
            return self.project(w)
        if not backend.PROJECTS_IN_MODEL_STEP:
            return self.train_step_projection(w)
        if not self.projects_in_model_step:
            raise ValueError(
                f"{self!r} on {self.layer_name or 'a kernel'!r}: on this Keras backend the "
                "projection runs in the model's train step, which `keras_capacity.bind(model)` "
                "installs; call it before `fit` (also after loading a model)."
            )
        return w  # the model's train step projects it next (see keras_capacity.backend.jax)

    # --------------------------------------------------------- serialization

    def get_config(self):
        config = {
            "lip": self.lip,
            "dist": self.dist,
            "mode": self.mode,
            "n_iter": self.n_iter,
            "every": self.every,
        }
        if self.geometry is not None:
            config["geometry"] = self.geometry.get_config()
            config["kernel_shape"] = list(self.kernel_shape)
            config["kernel_dtype"] = self.initial_kernel.dtype
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        geometry = config.pop("geometry", None)
        kernel_shape = config.pop("kernel_shape", None)
        dtype = config.pop("kernel_dtype", "float32")
        constraint = cls(**config)
        if geometry is not None:
            constraint.create_state(
                kernel_shape, operators.OperatorGeometry.from_config(geometry), dtype
            )
        return constraint

    def __repr__(self):
        return f"LipDist(lip={self.lip}, dist={self.dist}, mode={self.mode!r})"
