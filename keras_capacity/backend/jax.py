"""The JAX side of `keras_capacity.backend`.

**Where the constraint projects on JAX.** Keras's JAX trainer applies
constraints inside ``optimizer.stateless_apply``, whose scope maps only the
trainable and the optimizer variables; during ``fit`` the model's other
variables hold no values at all (the state travels as arrays), so a
constraint cannot read ``K0`` or count steps there. `keras_capacity.bind`
therefore installs a projection into the model's own train step
(`install_projection_step`): after Keras's step, every ``LipDist``
projects its kernel with the whole state mapped (kernels, ``K0``, step
counts, estimator state), and the updated arrays go on in the state. The
optimizer's own call of the constraint leaves the kernel as it is.

**Products at float32's own precision.** JAX's default precision lets an
accelerator round a float32 matrix product or convolution through
TensorFloat-32 (a 10-bit mantissa): on an H200 a 512x512 product came out
2.9e-4 off in relative terms (``benchmarks/gpu_layers.py``), above the
1e-5 by which the screens inflate their bounds and the certificate shifts
its matrix (`keras_capacity.screen.INFLATION`,
`keras_capacity.certificates.SHIFT`). The constraint traces its
projections inside `full_precision` (on every backend), and this backend's
`compile` and `compile_eager` trace the package's other compiled work
(norms) the same way; the model's own layers keep the default.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.scipy.linalg import eigh_tridiagonal
from keras import ops

# Constraints project in the model's train step, not in the optimizer's.
PROJECTS_IN_MODEL_STEP = True


def complex_dtype(dtype):
    return jnp.complex128 if jnp.dtype(dtype) == jnp.float64 else jnp.complex64


def complex(real, imaginary):  # noqa: A001
    return jax.lax.complex(real, imaginary)


def matmul(a, b):
    return jnp.matmul(a, b)


def fft2(x):
    return jnp.fft.fft2(x)


def ifft2(x):
    return jnp.fft.ifft2(x)


def rfft2(x):
    return jnp.fft.rfft2(x)


def irfft2(x, size):
    return jnp.fft.irfft2(x, s=size)


# On the CPU, JAX 0.10's LAPACK kernels split a batch of matrices over XLA's
# intra-op thread pool and block a pool thread until the pieces are done;
# two such kernels running at once (the projection's real and complex
# decompositions, or two simulated devices) occupy both threads of a
# 2-core machine and wait forever (seen with chunks of 16 matrices as with
# the whole batch). One matrix per call never enters the pool, so on the CPU
# the batch is decomposed one matrix at a time in a loop inside the compiled
# step; accelerators take the whole batch. The loop is compiled once per
# shape: called eagerly (a projection outside the train step), a bare
# ``jax.lax.map`` would trace and compile a new loop at every call.
def _batched(decompose, matrices):
    if jax.default_backend() != "cpu" or matrices.ndim < 3 or matrices.shape[0] == 1:
        return decompose(matrices)
    return _one_at_a_time(decompose, matrices)


@functools.partial(jax.jit, static_argnums=0)
def _one_at_a_time(decompose, matrices):
    return jax.lax.map(decompose, matrices)


def eigh(matrices):
    values, vectors = _batched(jnp.linalg.eigh, matrices)
    return jnp.real(values), vectors


def eigvalsh(matrices):
    return jnp.real(_batched(jnp.linalg.eigvalsh, matrices))


def largest_eigenvalue(matrices):
    """The largest eigenvalue (real dtype) of each Hermitian matrix of the
    batch. JAX's ``eigvalsh`` computes the eigenvectors too; on the CPU the
    value comes instead from the matrix's tridiagonal form (LAPACK's
    reduction, no eigenvectors) by bisection on its Sturm counts
    (`jax.scipy.linalg.eigh_tridiagonal`), 2-4x faster for 64x64 to 512x512
    blocks on 2 cores and as accurate (both about 3e-7 relative,
    ``benchmarks/RESULTS.md``). Accelerators, not measured for it, keep
    ``eigvalsh``."""
    if jax.default_backend() != "cpu":
        return jnp.max(eigvalsh(matrices), axis=-1)
    if matrices.ndim == 2:
        return largest_by_bisection(matrices)
    flat = matrices.reshape((-1, *matrices.shape[-2:]))
    return _one_at_a_time(largest_by_bisection, flat).reshape(matrices.shape[:-2])


def largest_by_bisection(matrix):
    """The largest eigenvalue of one Hermitian matrix, from its tridiagonal
    form by bisection (`largest_eigenvalue`'s CPU path; also timed on
    accelerators by ``benchmarks/gpu_layers.py``)."""
    _, diagonal, off_diagonal, _ = jax.lax.linalg.tridiagonal(matrix)
    last = matrix.shape[-1] - 1
    return eigh_tridiagonal(
        jnp.real(diagonal),
        jnp.real(off_diagonal),
        eigvals_only=True,
        select="i",
        select_range=(last, last),
    )[0]


def stateless_normal(shape, seed, dtype):
    key = jax.random.fold_in(jax.random.key(7), ops.cast(seed[0], "uint32"))
    return jax.random.normal(key, shape, dtype=dtype)


def assert_finite(x, check, message):
    """``x``: JAX's compiled steps have no run-time assertions (as XLA on
    TensorFlow); a non-finite kernel reaches the loss, where the training
    program stops on it."""
    return x


def eager_value(variable):
    return np.asarray(variable.value)


def linear_adjoint(linear_map, input_shape, y, dtype):
    x = jnp.zeros((y.shape[0], *input_shape), dtype=dtype)
    _, pullback = jax.vjp(linear_map, x)
    return pullback(y)[0]


@contextlib.contextmanager
def full_precision():
    """A context (also a decorator) in which the matrix products and
    convolutions traced are at float32's own precision (not the
    TensorFloat-32 or bfloat16 passes that accelerators otherwise use); see
    the module docstring."""
    with jax.default_matmul_precision("float32"):
        yield


def compile(function):  # noqa: A001
    return jax.jit(full_precision()(function))


def compile_eager(function):
    """``function`` compiled (``jax.jit``), for work outside the train step:
    run eagerly, JAX compiles every operation at the first use of each
    shape, which costs more than compiling the whole function once (the
    first 15-round projection of a 4-channel ``simple_convnet6``: 5.3 s
    compiled whole, 9.7 s eagerly; with 32 channels, the later calls take
    0.6-0.8 s, ``benchmarks/eager_projection.py``)."""
    return jax.jit(full_precision()(function))


def float64():
    """A context in which arrays may be float64 (JAX makes them float32
    unless 64-bit types are enabled): for the reported float64 norms."""
    return jax.enable_x64(True)


def inside_compiled_step(x):
    """Whether ``x`` is being traced (inside ``jax.jit``)."""
    return isinstance(ops.convert_to_tensor(x), jax.core.Tracer)


def strategy_scope_of(variable):
    return contextlib.nullcontext()


def _replicated(function):
    """``function`` computed whole on every device of the active Keras
    distribution (its arguments and results replicated, as the state of a
    data-parallel model is), not partitioned: XLA's partitioning of the
    projection's eigendecompositions across CPU devices can deadlock."""
    distribution = keras.distribution.distribution()
    mesh = getattr(getattr(distribution, "device_mesh", None), "backend_mesh", None)
    if mesh is None or mesh.size == 1:
        return function
    spec = jax.sharding.PartitionSpec()
    return jax.shard_map(function, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)


def install_projection_step(model, pairs):
    """Wraps ``model.train_step`` (once) so that after Keras's step every
    constrained kernel of ``pairs`` (``[(layer, LipDist)]``) is projected
    with the whole state mapped; see the module docstring."""
    for _, constraint in pairs:
        constraint.projects_in_model_step = True
    installed = getattr(model.train_step, "keras_capacity_pairs", None)
    if installed is not None:
        installed[:] = pairs
        return
    original = model.train_step

    def project(values):
        variables = list(model.trainable_variables) + list(model.non_trainable_variables)
        mapping = list(zip(variables, values, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            for layer, constraint in train_step.keras_capacity_pairs:
                # The constrained variable (a separable layer's pointwise
                # kernel; the constraint assigns the depthwise one itself).
                variable = getattr(layer, constraint.variable_name)
                variable.assign(constraint.train_step_projection(variable))
        updated = []
        for variable, value in mapping:
            new = scope.get_current_value(variable)
            updated.append(value if new is None else new)
        return updated

    def train_step(state, data):
        logs, (trainable, non_trainable, optimizer_state, metrics) = original(state, data)
        updated = _replicated(project)(list(trainable) + list(non_trainable))
        count = len(trainable)
        return logs, (updated[:count], updated[count:], optimizer_state, metrics)

    train_step.keras_capacity_pairs = list(pairs)
    model.train_step = train_step
