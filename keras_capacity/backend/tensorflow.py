"""The TensorFlow side of `keras_capacity.backend`.

Keras's TensorFlow trainer applies constraints inside the compiled train
step with every variable readable and assignable, so ``LipDist`` projects
there itself (`install_projection_step` has nothing to do).
"""

import contextlib
import warnings

import tensorflow as tf

# Constraints project where Keras calls them, in the optimizer's step.
PROJECTS_IN_MODEL_STEP = False


def complex_dtype(dtype):
    """The complex dtype of a real one (float64 -> complex128, else complex64)."""
    return tf.complex128 if tf.as_dtype(dtype) == tf.float64 else tf.complex64


def complex(real, imaginary):
    return tf.complex(real, imaginary)


def matmul(a, b):
    """Batched matrix product that keeps complex128 (``keras.ops.matmul``
    returns complex64 for it in Keras 3.15)."""
    return tf.linalg.matmul(a, b)


def fft2(x):
    """The 2-D DFT over the last two axes of a real or complex tensor."""
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_complex:
        x = tf.cast(x, complex_dtype(x.dtype))
    return tf.signal.fft2d(x)


def ifft2(x):
    return tf.signal.ifft2d(x)


def rfft2(x):
    """The 2-D DFT of a real tensor over its last two axes, the last one
    halved (``W // 2 + 1`` columns) by Hermitian symmetry."""
    return tf.signal.rfft2d(x)


def irfft2(x, size):
    return tf.signal.irfft2d(x, fft_length=size)


def eigh(matrices):
    """Eigenvalues (ascending, real dtype) and eigenvectors of a batch of
    Hermitian matrices."""
    values, vectors = tf.linalg.eigh(matrices)
    return tf.math.real(values), vectors


def eigvalsh(matrices):
    """Eigenvalues (ascending, real dtype) of a batch of Hermitian matrices."""
    return tf.math.real(tf.linalg.eigvalsh(matrices))


def largest_eigenvalue(matrices):
    """The largest eigenvalue (real dtype) of each Hermitian matrix of the
    batch: TensorFlow's ``eigvalsh`` computes no eigenvectors."""
    return tf.reduce_max(eigvalsh(matrices), axis=-1)


def stateless_normal(shape, seed, dtype):
    """Standard normal numbers determined by the integer tensor ``seed``
    (two values): the same on every replica and every call."""
    return tf.random.stateless_normal(shape, seed=seed, dtype=dtype)


def assert_finite(x, check, message):
    """``x``, once ``check`` is found to hold no NaN or inf; otherwise the
    step fails with ``InvalidArgumentError(message)``. (XLA drops the check.)"""
    with tf.control_dependencies([tf.debugging.assert_all_finite(check, message)]):
        return tf.identity(x)


def eager_value(variable):
    """A variable's value as numpy, also while a compiled step is traced."""
    with tf.init_scope():
        return variable.numpy()


def linear_adjoint(linear_map, input_shape, y, dtype):
    """``A^T y`` for the linear map ``A = linear_map``: the gradient of
    ``<A x, y>`` with respect to ``x`` (any ``x``: the map is linear)."""
    x = tf.zeros((tf.shape(y)[0], *input_shape), dtype=dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        ax = linear_map(x)
    return tape.gradient(ax, x, output_gradients=y)


def compile(function):
    """``function`` compiled once per input signature."""
    return tf.function(function, reduce_retracing=True)


def inside_compiled_step(x):
    """Whether the code runs while a compiled function (the train step) is
    traced (``x``, a tensor of it, is not needed here)."""
    return tf.inside_function()


def compile_eager(function):
    """``function`` itself: TensorFlow runs eager operations without
    compiling them first."""
    return function


def float64():
    """A context in which arrays may be float64 (always, on TensorFlow)."""
    return contextlib.nullcontext()


def full_precision():
    """Nothing to set: TensorFlow's TensorFloat-32 switch holds for the
    whole process when a graph runs, not per operation, so
    `install_projection_step` warns where it is on."""
    return contextlib.nullcontext()


def install_projection_step(model, pairs):
    """Nothing to install (the constraints project in the optimizer's
    step); warns where a GPU may round the projections' float32 products
    through TensorFloat-32 (on by default in TensorFlow), beyond what the
    screens' bounds and the certificate allow for."""
    if tf.config.list_physical_devices("GPU") and (
        tf.config.experimental.tensor_float_32_execution_enabled()
    ):
        warnings.warn(
            "TensorFloat-32 is on with a GPU: the projections' float32 products may round "
            "at about 1e-3, beyond the 1e-5 their certified bounds allow for; call "
            "tf.config.experimental.enable_tensor_float_32_execution(False) first.",
            stacklevel=3,
        )


def strategy_scope_of(variable):
    """The ``tf.distribute`` scope ``variable`` was created in (to assign
    it outside that scope), or a null context."""
    value = getattr(variable, "value", variable)
    strategy = getattr(value, "distribute_strategy", None)
    if isinstance(value, tf.distribute.DistributedValues) and strategy:
        if not tf.distribute.has_strategy():
            return strategy.scope()
    return contextlib.nullcontext()
