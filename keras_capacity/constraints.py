"""``LipDist``: hard constraints on a layer's Lipschitz constant and on the
(2,1) distance of its kernel to initialization (SPEC §2-3).

The constraint keeps state (``K0``, the step count, its estimator's state),
decides by the step count whether a step projects, and serializes; the
projections are pure functions (`keras_capacity.radial.project`,
`keras_capacity.orthogonal.project`), and ``Lip(K)`` for the radial
one comes from an estimator chosen when the constraint is bound
(`keras_capacity.lipschitz_estimators`: exact for Dense kernels,
``1 x 1`` convolutions and, by FFT, circular ones; tracked by a
warm-started block eigensolver otherwise). A separable layer's constraint
acts on its composed map and projects both of its kernels
(`keras_capacity.separable`).

**Tolerances.** Every kernel the constraint returns has distance
``<= dist * (1 + 1e-5)`` (float32 rounding) and Lipschitz constant
``<= lip * (1 + 1e-3)``: exactly so for projections made now
(`LipDist.project`), for circular convolutions and for
``mode="orthogonal"``; where the estimate is tracked, the train step's bound
rests on it (``bind`` starts it from the converged top singular vectors).
An optimizer step that lifts a direction far above the tracked ones makes
the estimate lag until later projections catch up.

**State.** ``LipDist`` is also a Keras layer (with no trainable weights)
tracked by the layer it constrains: ``K0``, the step count and the
projection's state (tracked directions, or the per-block bounds of
`keras_capacity.screen`) are saved by ``model.save``, ``save_weights``
and ``keras.callbacks.BackupAndRestore``, and restored by ``load_model`` and
``load_weights``, so a loaded model keeps measuring from the original
``K0``. They appear in ``model.summary()`` as non-trainable parameters.

**Non-finite kernels** (NaN, inf, or values whose squares overflow) end the
step with an ``InvalidArgumentError`` naming the variable, instead of being
projected. (XLA drops such run-time checks; under ``jit_compile=True`` the
NaN reaches the loss instead.)
"""

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_capacity import (
    backend,
    constraint_values,
    exact_norms,
    fourier,
    linear_layers,
    lipschitz_estimators,
    operators,
    orthogonal,
    radial,
    screen,
    separable,
)

MODES = ("radial", "orthogonal")
# What the constraint guarantees for every kernel it returns (relative).
LIPSCHITZ_TOLERANCE = 1e-3
DISTANCE_TOLERANCE = 1e-5


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"LipDist: `{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


@functools.lru_cache(maxsize=128)
def _eager_orthogonal(lip, dist, geometry, n_iter):
    """`keras_capacity.orthogonal.project` with these settings, for a
    projection outside the train step: compiled once per kernel shape where
    the backend compiles eager work (`keras_capacity.backend.compile_eager`)."""
    return backend.compile_eager(
        lambda kernel, k0: orthogonal.project(kernel, k0, lip, dist, geometry, n_iter)
    )


@keras.saving.register_keras_serializable(package="keras_capacity")
class LipDist(keras.constraints.Constraint, keras.layers.Layer):
    """Constrains a kernel's Lipschitz constant and its distance to ``K0``.

    Use it as the ``kernel_constraint`` of ``keras.layers.Dense``, of
    ``Conv1D``, ``Conv2D``, ``Conv3D`` (any padding, strides, dilation and
    groups; `keras_capacity.CircularConv2D` too) and of the
    transposed convolutions; as the ``depthwise_constraint`` of
    ``DepthwiseConv1D``/``2D``; as the ``pointwise_constraint`` of
    ``SeparableConv1D``/``2D``, where it constrains the composed map (one
    convolution) and projects both kernels (`keras_capacity.separable`).
    Then call `keras_capacity.bind` once the model is built:

    >>> layer = keras.layers.Dense(10, kernel_constraint=LipDist(0.6, 50))
    >>> model = keras.Sequential([keras.Input((20,)), layer])
    >>> keras_capacity.bind(model)

    After every ``every``-th optimizer step the kernel ``K`` is projected onto
    ``{K : Lip(K) <= lip, ||K - K0||_{2,1} <= dist}``, ``Lip(K)`` being the
    operator norm of the map the layer computes on its actual input (for a
    convolution: its input size, padding, strides, dilation and groups),
    ``K`` that map's kernel and the (2,1) norm taken over its input axis
    (`keras_capacity.linear_layers`).
    ``K0`` is the kernel at `keras_capacity.bind` time, scaled down to
    ``lip`` if it was above. ``inf`` (or ``None``) switches a bound off;
    ``dist=0`` freezes the kernel at ``K0``.

    **Two ways to project.** Inside the compiled train step Keras calls the
    constraint after each optimizer step: it counts steps and projects on
    every ``every``-th with the in-graph estimate. `project` (and
    `keras_capacity.project`, or a call outside the train step)
    projects now, exactly, with the converged float64 ``Lip(K)``.

    Args:
        lip: the Lipschitz bound, ``> 0``.
        dist: the (2,1) distance bound, ``>= 0``.
        mode: ``"radial"`` (rescale ``K``) or ``"orthogonal"`` (the nearest
            kernel: singular-value clipping for Dense, per-frequency clipping
            for ``CircularConv2D``, per group for grouped ones; refused at
            ``bind`` for zero-padded and separable layers).
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
        self.layout = linear_layers.KERNEL
        self.partner_shape = None
        # A separable layer's depthwise kernel, projected with the pointwise
        # one; set by bind, and not tracked (it is the layer's variable).
        object.__setattr__(self, "partner", None)
        self.layer_name = None
        self.estimator = None
        # mode="orthogonal": the per-block screen (keras_capacity.screen).
        self.screen = None
        # The radial estimator's state, or the orthogonal screen's.
        self.projection_state = ()
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

    @property
    def variable_name(self):
        """The attribute of the layer's variable this constraint projects
        (``kernel``; ``pointwise_kernel`` for a separable layer)."""
        return linear_layers.variable_name(self.layout)

    @property
    def map_shape(self):
        """The shape of the layer's map kernel (see
        `keras_capacity.linear_layers.layout`)."""
        return linear_layers.map_kernel_shape(self.layout, self.kernel_shape, self.partner_shape)

    def create_state(
        self,
        kernel_shape,
        geometry,
        dtype="float32",
        layout=linear_layers.KERNEL,
        partner_shape=None,
    ):
        """Creates the state variables for a kernel acting as ``geometry``
        and chooses the estimator; called by `keras_capacity.bind` and
        by deserialization (the values are zero until ``bind`` or weight
        loading fills them). ``kernel_shape`` is the constrained variable's;
        ``layout`` says how it holds the map kernel, with the depthwise
        kernel's ``partner_shape`` for a separable layer
        (`keras_capacity.linear_layers.layout`)."""
        kernel_shape = tuple(int(d) for d in kernel_shape)
        partner_shape = None if partner_shape is None else tuple(int(d) for d in partner_shape)
        if self.geometry is not None:
            if (geometry, kernel_shape, layout, partner_shape) != (
                self.geometry,
                self.kernel_shape,
                self.layout,
                self.partner_shape,
            ):
                raise ValueError(
                    f"LipDist on {self.layer_name!r} is already bound to a kernel "
                    f"{self.kernel_shape} acting as {self.geometry}; got {kernel_shape} acting "
                    f"as {geometry}. Give every layer its own LipDist."
                )
            return
        where = f"LipDist on {self.layer_name or 'a kernel'!r}"
        map_shape = linear_layers.map_kernel_shape(layout, kernel_shape, partner_shape)
        if self.mode == "orthogonal":
            if layout == linear_layers.SEPARABLE_LAYOUT:
                raise ValueError(
                    f"{where}: a separable layer's composed kernels are not a convex set, so "
                    "mode='orthogonal' has no nearest kernel; use mode='radial'."
                )
            fourier.check_embeddable(geometry, map_shape, where)
        self.geometry, self.kernel_shape = geometry, kernel_shape
        self.layout, self.partner_shape = layout, partner_shape
        state = dict(trainable=False, aggregation="only_first_replica", initializer="zeros")
        self.initial_kernel = self.add_weight(
            shape=kernel_shape, dtype=dtype, name="initial_kernel", **state
        )
        if layout == linear_layers.SEPARABLE_LAYOUT:
            self.initial_depthwise = self.add_weight(
                shape=partner_shape, dtype=dtype, name="initial_depthwise", **state
            )
        if self.has_lipschitz and self.mode == "radial":
            self.estimator = lipschitz_estimators.choose(geometry, map_shape, self.lip)
            self.projection_state = tuple(
                self.add_weight(shape=shape, dtype=dtype, name=name, **state)
                for name, shape in self.estimator.state_shapes().items()
            )
        self.steps = self.add_weight(shape=(), dtype="int32", name="steps", **state)
        self.initialized = self.add_weight(shape=(), dtype="int32", name="initialized", **state)
        if self.has_lipschitz and self.mode == "orthogonal" and self.n_iter == 1:
            # After the others, so that files saved before the screen load.
            self.screen = screen.choose(geometry, map_shape)
            if self.screen is not None:
                self.projection_state = tuple(
                    self.add_weight(shape=shape, dtype=dtype, name=name, **state)
                    for name, shape in self.screen.state_shapes().items()
                )

    @property
    def power_vectors(self):
        """The tracked singular directions (where the estimate is tracked)."""
        if not self.tracks_directions:
            raise AttributeError("power_vectors: this LipDist tracks no directions.")
        return self.projection_state[0]

    def attach(self, partner):
        """Gives a separable layer's constraint the layer's depthwise kernel
        variable, which it projects with the pointwise one (``bind`` does
        this, also after loading)."""
        object.__setattr__(self, "partner", partner)

    def _map_numpy(self, kernel, partner=None):
        """The map kernel of a variable's value (float64 numpy)."""
        kernel = np.asarray(ops.convert_to_numpy(kernel), np.float64)
        if self.layout == linear_layers.SEPARABLE_LAYOUT:
            partner = np.asarray(ops.convert_to_numpy(partner), np.float64)
            channels, multiplier = partner.shape[-2:]
            return np.einsum("...cj,cjo->...co", partner, kernel.reshape(channels, multiplier, -1))
        return kernel.reshape(self.map_shape)

    def initial_map_kernel(self):
        """``K0`` as the layer's map kernel (float64 numpy): what distances
        are measured from."""
        partner = self.initial_depthwise if self.layout == linear_layers.SEPARABLE_LAYOUT else None
        return self._map_numpy(self.initial_kernel, partner)

    def initialize(self, kernel_variable):
        """Rescales the kernel to ``lip`` if above (exact float64 norm of the
        layer's map) and records it as ``K0``; starts the estimator's state.
        Restored state (after loading weights) is kept as it is. A separable
        layer's pointwise kernel carries the rescale, and both kernels are
        recorded."""
        if self.is_bound:
            return
        kernel = ops.convert_to_numpy(kernel_variable)
        if self.has_lipschitz:
            map_kernel = self._map_numpy(kernel, self.partner)
            if self.estimator is None:
                sigma = exact_norms.spectral_norm(map_kernel, self.geometry)
            else:
                sigma, state = self.estimator.exact(map_kernel.astype(kernel.dtype), ())
                sigma = float(sigma)
                if state:  # the tracked directions (a screen starts below)
                    self._store(state)
            if sigma > self.lip:
                kernel = (kernel * (self.lip / sigma)).astype(kernel.dtype)
                kernel_variable.assign(kernel)
        if self._block_screen is not None:
            self._store(self._block_screen.start(kernel))
        self.initial_kernel.assign(kernel)
        if self.layout == linear_layers.SEPARABLE_LAYOUT:
            self.initial_depthwise.assign(ops.convert_to_numpy(self.partner))
        self.steps.assign(0)
        self.initialized.assign(1)

    def _store(self, state):
        for variable, value in zip(self.projection_state, state, strict=True):
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
        if self.layout == linear_layers.SEPARABLE_LAYOUT and self.partner is None:
            raise ValueError(
                f"{self!r} on {where!r} constrains a separable layer and needs its depthwise "
                "kernel: call `keras_capacity.bind(model)` (also after loading a model)."
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

    def _projected(self, kernel, partners, state, n_iter, lipschitz, compiled):
        """``(projected kernel, partners, estimator state)``, with ``Lip`` of
        the map kernel from ``lipschitz(map kernel, state) -> (sigma,
        state)``; ``partners`` is ``(depthwise kernel,)`` for a separable
        layer (projected too), else ``()``; pure."""
        k0 = ops.convert_to_tensor(self.initial_kernel)
        if self.layout == linear_layers.SEPARABLE_LAYOUT:
            d0 = ops.convert_to_tensor(self.initial_depthwise)
            if self.dist == 0:
                return k0, (d0,), state
            depthwise, kernel, state = separable.project(
                partners[0], kernel, d0, k0, self.lip, self.dist, n_iter, lipschitz, state, compiled
            )
            return kernel, (depthwise,), state
        if self.dist == 0:
            return k0, partners, state
        shape = kernel.shape
        kernel = linear_layers.to_map_kernel(kernel, self.layout)
        k0 = linear_layers.to_map_kernel(k0, self.layout)
        if self.mode == "orthogonal" and self.screen is not None and n_iter == 1:
            kernel, state = orthogonal.project_screened(
                kernel, k0, self.lip, self.dist, self.screen, state
            )
        elif self.mode == "orthogonal" and compiled:
            kernel = orthogonal.project(kernel, k0, self.lip, self.dist, self.geometry, n_iter)
        elif self.mode == "orthogonal":
            kernel = _eager_orthogonal(self.lip, self.dist, self.geometry, n_iter)(kernel, k0)
        else:
            axis = linear_layers.input_axis(self.geometry)
            kernel, state = radial.project(
                kernel, k0, self.lip, self.dist, n_iter, lipschitz, state, axis
            )
        return linear_layers.from_map_kernel(kernel, self.layout, shape), partners, state

    def _partners(self):
        """``(the depthwise kernel,)`` for a separable layer, else ``()``."""
        if self.layout != linear_layers.SEPARABLE_LAYOUT:
            return ()
        return (ops.convert_to_tensor(self.partner),)

    def _store_partners(self, partners):
        if partners:
            self.partner.assign(partners[0])

    def project(self, kernel, n_iter: int | None = None):
        """Projects ``kernel`` now, exactly (``Lip`` converged in float64),
        with ``n_iter`` rounds (default: the constraint's own); keeps the
        estimator's state for the train step. A separable layer's depthwise
        kernel is projected (assigned) with it."""
        kernel = self._checked(kernel)
        n_iter = self.n_iter if n_iter is None else _positive_int("n_iter", n_iter)

        state = tuple(ops.convert_to_numpy(v) for v in self.projection_state)
        exact = self.estimator.exact if self.estimator else None
        with backend.full_precision():
            kernel, partners, state = self._projected(
                kernel, self._partners(), state, n_iter, exact, compiled=False
            )
        self._store(state)
        self._store_partners(partners)
        return kernel

    def train_step_projection(self, w):
        """The optimizer's hook inside the compiled train step: counts the
        step and, on every ``every``-th, projects with the in-graph estimate."""
        self._require_bound(w)
        self.steps.assign_add(1)
        step = ops.convert_to_tensor(self.steps)
        state = tuple(ops.convert_to_tensor(v) for v in self.projection_state)
        partners = self._partners()

        def projected():
            estimate = lambda value, state: self.estimator.in_graph(value, state, step)  # noqa: E731
            with backend.full_precision():
                return self._projected(
                    self._checked(w), partners, state, self.n_iter, estimate, compiled=True
                )

        if self.every == 1:
            kernel, partners, state = projected()
        else:  # only the steps that project pay for the check and the estimate
            kernel, partners, state = ops.cond(
                ops.equal(step % self.every, 0),
                projected,
                lambda: (ops.convert_to_tensor(w), partners, state),
            )
        # Outside the cond: under MirroredStrategy this assignment is a
        # synchronization point, which control flow may not contain.
        self._store(state)
        self._store_partners(partners)
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

    @property
    def _block_screen(self):
        """The per-block screen whose state this constraint keeps (the
        orthogonal projection's, or the radial estimator's), or ``None``."""
        return self.screen or getattr(self.estimator, "screen", None)

    def load_own_variables(self, store):
        """Keras's loading, also of files saved before the per-block screens
        kept state (`keras_capacity.screen`): there their bounds start
        unknown, so the first projection decomposes every block."""
        if self._block_screen is not None:
            kept = [v for v in self.variables if all(v is not s for s in self.projection_state)]
            if len(store.keys()) == len(kept):
                for i, variable in enumerate(kept):
                    variable.assign(store[f"{i}"])
                zeros = np.zeros(self.kernel_shape, self.initial_kernel.dtype)
                self._store(self._block_screen.start(zeros))
                return
        super().load_own_variables(store)

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
            if self.layout != linear_layers.KERNEL:
                config["layout"] = self.layout
            if self.partner_shape is not None:
                config["partner_shape"] = list(self.partner_shape)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        geometry = config.pop("geometry", None)
        kernel_shape = config.pop("kernel_shape", None)
        dtype = config.pop("kernel_dtype", "float32")
        layout = config.pop("layout", linear_layers.KERNEL)
        partner_shape = config.pop("partner_shape", None)
        constraint = cls(**config)
        if geometry is not None:
            constraint.create_state(
                kernel_shape,
                operators.OperatorGeometry.from_config(geometry),
                dtype,
                layout,
                partner_shape,
            )
        return constraint

    def __repr__(self):
        return f"LipDist(lip={self.lip}, dist={self.dist}, mode={self.mode!r})"
