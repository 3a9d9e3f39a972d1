"""``LipDist``: hard constraints on a layer's Lipschitz constant and on the
(2,1) distance of its kernel to initialization (SPEC §2-3)."""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_capacity import circular
from keras_capacity import constraint_values
from keras_capacity import operators
from keras_capacity import orthogonal
from keras_capacity import projections
from keras_capacity import spectral

MODES = ("radial", "orthogonal")
# What the constraint guarantees for every kernel it returns (relative).
LIPSCHITZ_TOLERANCE = 1e-3
DISTANCE_TOLERANCE = 1e-5
# Singular directions tracked by the in-graph subspace iteration; a random
# probe of weight PROBE_WEIGHT is mixed into the weakest of them at every
# projection.
TRACKED_DIRECTIONS = 4
PROBE_WEIGHT = 0.5


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"LipDist: `{name}` must be an integer >= 1, got {value!r}.")
    if value < 1:
        raise ValueError(f"LipDist: `{name}` must be >= 1, got {value!r}.")
    return int(value)


@keras.saving.register_keras_serializable(package="keras_capacity")
class LipDist(keras.constraints.Constraint, keras.layers.Layer):
    """Constrains a kernel's Lipschitz constant and its distance to ``K0``.

    Use it as the ``kernel_constraint`` of ``keras.layers.Dense``,
    ``keras.layers.Conv2D`` (``"same"``/``"valid"`` padding, any strides or
    dilation) or :class:`keras_capacity.CircularConv2D`, then call
    :func:`keras_capacity.bind` once the model is built:

    >>> layer = keras.layers.Dense(10, kernel_constraint=LipDist(0.6, 50))
    >>> model = keras.Sequential([keras.Input((20,)), layer])
    >>> keras_capacity.bind(model)

    After every optimizer step (every ``every``-th step) the kernel ``K`` is
    projected onto ``{K : Lip(K) <= lip, ||K - K0||_{2,1} <= dist}``:

    * ``Lip(K)`` is the operator norm of the map the layer computes on its
      actual input (for a convolution: on its ``H x W`` input, with its
      padding, strides and dilation). The radial projection scales ``K`` by
      ``lip / Lip(K)`` when above. For a ``CircularConv2D`` (strides that
      divide its input, up to ``circular.EXACT_COST_LIMIT``) the train step
      computes ``Lip(K)`` exactly by FFT (:mod:`keras_capacity.circular`).
      For other layers it is tracked by subspace iteration on ``A`` and its
      adjoint over the top ``TRACKED_DIRECTIONS`` singular directions,
      warm-started from the previous step. Eager projections use the
      converged float64 value.
    * The distance ball is projected onto exactly (Euclidean projection by
      group soft-thresholding, the threshold found by sorting).
    * With both constraints, ``n_iter`` alternating rounds (distance, then
      Lipschitz) are followed by a feasibility step: if the distance still
      exceeds ``dist``, the kernel moves along the segment toward ``K0`` to
      the nearest point inside the ball. The Lipschitz constant is convex
      and both ends of that segment satisfy it, so the result satisfies both.

    **Tolerances.** Every kernel the constraint returns has distance
    ``<= dist * (1 + 1e-5)`` (float32 rounding) and Lipschitz constant
    ``<= lip * (1 + 1e-3)``. Eager projections (:func:`keras_capacity.project`,
    a direct call) are exact, and so are train-step projections that use the
    exact FFT norm or ``mode="orthogonal"``. Otherwise the bound rests on the
    tracked estimate, which iterates until the Ritz values change by less
    than 1e-5 (2 to 50 steps); ``bind`` starts it from the converged top
    singular vectors. An optimizer step that lifts a direction far above the
    tracked ones makes the estimate lag until later projections catch up.

    ``K0`` is the kernel at :func:`keras_capacity.bind` time, after it was
    scaled down to ``lip`` if it exceeded it. ``lip=inf`` or ``dist=inf``
    switches a constraint off; ``dist=0`` freezes the kernel at ``K0``.

    **State.** ``LipDist`` is also a Keras layer (with no trainable
    weights), tracked by the layer it constrains: its variables ``K0``, the
    tracked singular directions and the step counter are saved by ``model.save``,
    ``model.save_weights`` and ``keras.callbacks.BackupAndRestore``, and
    restored by ``keras.models.load_model`` and ``load_weights`` (the
    directions exist only where the estimate is tracked); a loaded
    model keeps measuring from the original ``K0``. They appear in
    ``model.summary()`` as non-trainable parameters.

    **Non-finite kernels** raise ``tf.errors.InvalidArgumentError`` naming
    the variable, instead of projecting NaN. (XLA drops such run-time checks;
    under ``jit_compile=True`` the NaN reaches the loss instead, which
    ``keras.callbacks.TerminateOnNaN`` catches.)

    Args:
        lip: the Lipschitz bound, ``> 0``; ``inf`` or ``None`` for none.
        dist: the (2,1) distance bound, ``>= 0``; ``inf`` or ``None`` for none.
        mode: ``"radial"`` (rescale ``K``), or ``"orthogonal"``: the nearest
            kernel (Euclidean), by singular-value clipping (Dense) or
            per-frequency clipping of the FFT of the kernel on its input grid
            (``CircularConv2D``; a zero-padded ``Conv2D`` is refused at
            ``bind``), combined with the distance ball and the kernel's
            support by ``n_iter`` rounds of Dykstra's algorithm, then the
            feasibility step (see :mod:`keras_capacity.orthogonal`). Its
            Lipschitz bound holds exactly in the train step too: the
            feasibility step uses the exact in-graph spectrum.
        n_iter: alternating rounds per projection (with both constraints).
        every: project on every ``every``-th optimizer step only. The count
            is kept inside the compiled train step. A direct call outside
            ``tf.function`` (or with ``run_eagerly=True``) always projects.
    """

    def __init__(self, lip=math.inf, dist=math.inf, *, mode="radial", n_iter=1, every=1):
        keras.layers.Layer.__init__(self, trainable=False)
        self.lip = constraint_values.check_bound(lip, constraint_values.LIPSCHITZ, "LipDist: `lip`")
        self.dist = constraint_values.check_bound(dist, constraint_values.DISTANCE, "LipDist: `dist`")
        if mode not in MODES:
            raise ValueError(
                f"LipDist: unknown mode {mode!r}; expected one of {MODES}."
            )
        self.mode = mode
        self.n_iter = _positive_int("n_iter", n_iter)
        self.every = _positive_int("every", every)
        self.geometry = None
        self.kernel_shape = None
        self.layer_name = None

    # ------------------------------------------------------------------ state

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
        return (
            self.has_lipschitz
            and self.mode == "radial"
            and self.geometry is not None
            and not circular.has_exact_norm(self.geometry, self.kernel_shape)
        )

    @property
    def is_bound(self):
        """Whether the state (``K0``, ...) exists and holds real values."""
        if self.geometry is None:
            return False
        with tf.init_scope():
            return bool(self.initialized.numpy())

    def create_state(self, kernel_shape, geometry, dtype="float32"):
        """Creates the state variables for a kernel acting as ``geometry``.

        Called by :func:`keras_capacity.bind` and by deserialization; the
        values are zero until ``bind`` or weight loading fills them.
        """
        if self.geometry is not None:
            if (geometry, tuple(kernel_shape)) != (self.geometry, self.kernel_shape):
                raise ValueError(
                    f"LipDist on {self.layer_name!r} is already bound to a "
                    f"kernel {self.kernel_shape} acting as {self.geometry}; "
                    f"got {tuple(kernel_shape)} acting as {geometry}. Give "
                    "every layer its own LipDist."
                )
            return
        if self.mode == "orthogonal":
            orthogonal.check_embeddable(
                geometry, kernel_shape, f"LipDist on {self.layer_name or 'a kernel'!r}"
            )
        self.geometry = geometry
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        state = dict(trainable=False, aggregation="only_first_replica")
        self.initial_kernel = self.add_weight(
            shape=self.kernel_shape, initializer="zeros", dtype=dtype,
            name="initial_kernel", **state,
        )
        if self.tracks_directions:
            directions = min(
                TRACKED_DIRECTIONS,
                int(np.prod(geometry.input_shape(self.kernel_shape))),
            )
            self.power_vectors = self.add_weight(
                shape=(directions, *geometry.input_shape(self.kernel_shape)[1:]),
                initializer="zeros", dtype=dtype, name="power_vectors", **state,
            )
        self.steps = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", name="steps", **state
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", name="initialized",
            **state,
        )

    def initialize(self, kernel_variable):
        """Rescales the kernel to ``lip`` if above and records it as ``K0``.

        Uses the exact float64 norm; where the estimate is tracked, the
        converged top singular pairs (SVD, or Lanczos) also start the
        subspace iteration. Restored state (after loading weights) is kept as
        it is.
        """
        if self.is_bound:
            return
        kernel = np.asarray(kernel_variable.numpy())
        if self.has_lipschitz:
            if self.tracks_directions:
                sigma, vectors = spectral.top_singular(
                    kernel, self.geometry, k=self.power_vectors.shape[0]
                )
                self.power_vectors.assign(vectors.astype(kernel.dtype))
            else:
                sigma = spectral.spectral_norm(kernel, self.geometry)
            if sigma > self.lip:
                kernel = (kernel * (self.lip / sigma)).astype(kernel.dtype)
                kernel_variable.assign(kernel)
        self.initial_kernel.assign(kernel)
        self.steps.assign(0)
        self.initialized.assign(1)

    # ------------------------------------------------------------- projection

    def _require_bound(self, w):
        where = getattr(w, "path", None) or self.layer_name or "a kernel"
        if not self.is_bound:
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

    def _lipschitz_estimate(self, kernel, block):
        """``(Lip(K), new block)``: exact in eager calls and for circular
        convolutions, else tracked.

        Eager calls (``project``, direct calls) use the converged float64
        values of :mod:`keras_capacity.spectral`; in the train step a
        ``CircularConv2D`` gets its exact FFT norm. Otherwise subspace
        iteration starts from the stored top singular directions, the last
        of them replaced by a random probe (stateless, seeded by the step
        count, so replicas agree): the probe keeps every direction present,
        where a symmetric start (say a constant image under a circular
        convolution) would stay in its invariant subspace forever.
        """
        if not self.tracks_directions:
            if tf.executing_eagerly():
                sigma = spectral.spectral_norm(kernel.numpy(), self.geometry)
                return tf.constant(sigma, kernel.dtype), block
            return circular.spectral_norm(kernel, self.geometry), block
        if tf.executing_eagerly():
            sigma, top = spectral.top_singular(
                kernel.numpy(), self.geometry, k=int(block.shape[0]),
                v0=np.asarray(block[0]),
            )
            return tf.constant(sigma, kernel.dtype), tf.constant(top, block.dtype)
        probe = tf.random.stateless_normal(
            tf.shape(block[-1:]),
            seed=tf.stack([tf.cast(self.steps, tf.int32), 7]),
            dtype=block.dtype,
        )
        weakest = operators.normalized(block[-1:]) + PROBE_WEIGHT * operators.normalized(probe)
        block = tf.concat([block[:-1], weakest], axis=0)
        return operators.subspace_iteration(
            kernel, block, self.geometry, min_steps=2
        )

    def _projected(self, kernel, block, n_iter):
        """Returns ``(projected kernel, new singular directions)``; pure."""
        k0 = tf.convert_to_tensor(self.initial_kernel)
        if self.dist == 0:
            return k0, block
        if self.mode == "orthogonal":
            return orthogonal.project(
                kernel, k0, self.lip, self.dist, self.geometry, n_iter
            ), block
        both = self.has_lipschitz and self.has_distance
        for _ in range(n_iter if both else 1):
            if self.has_distance:
                kernel = k0 + projections.project_l21_ball(kernel - k0, self.dist)
            if self.has_lipschitz:
                sigma, block = self._lipschitz_estimate(kernel, block)
                kernel = projections.scale_to_lipschitz(kernel, sigma, self.lip)
        if both:
            kernel = k0 + projections.shrink_to_l21_ball(kernel - k0, self.dist)
        return kernel, block

    def _checked(self, w):
        """``w``, after checking that its squared norm is finite: NaN, inf,
        or values whose products overflow (which would break the norm's
        Gram matrices) end training with a message naming the kernel."""
        where = self._require_bound(w)
        w = tf.convert_to_tensor(w)
        check = tf.debugging.assert_all_finite(
            tf.reduce_sum(tf.square(w)),
            f"LipDist: the kernel {where!r} holds NaN, inf or values too large to square "
            "before projection (diverging training?).",
        )
        with tf.control_dependencies([check]):
            return tf.identity(w)

    def project(self, kernel, n_iter=None):
        """Projects ``kernel`` now with ``n_iter`` rounds (default: the
        constraint's own) and keeps the tracked singular directions for the next call."""
        kernel = self._checked(kernel)
        n_iter = self.n_iter if n_iter is None else _positive_int("n_iter", n_iter)
        kernel, block = self._projected(kernel, self._block(), n_iter)
        if self.tracks_directions:
            self.power_vectors.assign(block)
        return kernel

    def _block(self):
        """The tracked singular directions, or a placeholder where none are."""
        return tf.convert_to_tensor(self.power_vectors if self.tracks_directions else 0.0)

    def __call__(self, w):
        if not tf.inside_function():
            return self.project(w)
        self._require_bound(w)
        self.steps.assign_add(1)
        block = self._block()
        if self.every == 1:
            kernel, block = self._projected(self._checked(w), block, self.n_iter)
        else:
            # Only the steps that project pay for the finiteness check.
            due = tf.equal(tf.convert_to_tensor(self.steps) % self.every, 0)
            kernel, block = tf.cond(
                due,
                lambda: self._projected(self._checked(w), block, self.n_iter),
                lambda: (tf.identity(w), block),
            )
        if self.tracks_directions:
            # Outside the cond: under MirroredStrategy this assignment is a
            # synchronization point, which control flow may not contain.
            self.power_vectors.assign(block)
        return kernel

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
                kernel_shape,
                operators.OperatorGeometry.from_config(geometry),
                dtype,
            )
        return constraint

    def __repr__(self):
        return f"LipDist(lip={self.lip}, dist={self.dist}, mode={self.mode!r})"
