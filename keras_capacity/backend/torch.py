"""The PyTorch side of `keras_capacity.backend`.

**Where the constraint projects on PyTorch.** Keras's torch trainer runs the
train step eagerly and, after the optimizer's update, calls every
constraint with the variables readable and assignable, as TensorFlow does;
``LipDist`` projects there itself, with its step count, ``K0`` and
estimator state in ordinary variables. What the eager step lacks is a sign
that it *is* the train step (TensorFlow and JAX trace it): a constraint
called there counts the step and follows its ``every`` schedule, while one
called by the user projects at once. `install_projection_step`
(run by `keras_capacity.bind`) therefore marks the model's train step,
and `inside_compiled_step` answers whether a marked step is running.
"""

import contextlib
import threading

import numpy as np
import torch
from keras import ops

# Constraints project where Keras calls them, in the optimizer's step.
PROJECTS_IN_MODEL_STEP = False

_STEP = threading.local()


def complex_dtype(dtype):
    """The complex dtype of a real one (float64 -> complex128, else complex64)."""
    return torch.complex128 if _torch_dtype(dtype) == torch.float64 else torch.complex64


def _torch_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, str(np.dtype(dtype)))


def complex(real, imaginary):  # noqa: A001
    return torch.complex(ops.convert_to_tensor(real), ops.convert_to_tensor(imaginary))


def matmul(a, b):
    return torch.matmul(a, b)


def fft2(x):
    return torch.fft.fft2(ops.convert_to_tensor(x))


def ifft2(x):
    return torch.fft.ifft2(x)


def rfft2(x):
    return torch.fft.rfft2(ops.convert_to_tensor(x))


def irfft2(x, size):
    return torch.fft.irfft2(x, s=tuple(size))


def eigh(matrices):
    """Eigenvalues (ascending, real dtype) and eigenvectors of a batch of
    Hermitian matrices (LAPACK's whole batch at once)."""
    return torch.linalg.eigh(matrices)


def eigvalsh(matrices):
    return torch.linalg.eigvalsh(matrices)


def largest_eigenvalue(matrices):
    """The largest eigenvalue of each Hermitian matrix of the batch."""
    return torch.linalg.eigvalsh(matrices)[..., -1]


def stateless_normal(shape, seed, dtype):
    """Standard normal numbers determined by the integer tensor ``seed``
    (its first value): the same on every call with that seed."""
    seed = ops.convert_to_tensor(seed)
    generator = torch.Generator().manual_seed(int(seed[0]) + 7)
    values = torch.randn(tuple(shape), generator=generator, dtype=_torch_dtype(dtype))
    return values.to(seed.device)


def assert_finite(x, check, message):
    """``x``, once ``check`` is found to hold no NaN or inf; otherwise a
    ``ValueError(message)`` (the step runs eagerly)."""
    if not bool(torch.isfinite(ops.convert_to_tensor(check)).all()):
        raise ValueError(message)
    return x


def eager_value(variable):
    return ops.convert_to_numpy(variable)


def linear_adjoint(linear_map, input_shape, y, dtype):
    """``A^T y`` for the linear map ``A = linear_map``, by autograd."""
    y = ops.convert_to_tensor(y)
    x = torch.zeros((y.shape[0], *input_shape), dtype=_torch_dtype(dtype), device=y.device)
    x.requires_grad_(True)
    with torch.enable_grad():
        (adjoint,) = torch.autograd.grad(linear_map(x), x, grad_outputs=y)
    return adjoint


@contextlib.contextmanager
def full_precision():
    """A context (also a decorator) in which PyTorch's float32 matrix
    products and cuDNN convolutions are not rounded through TensorFloat-32
    (a 10-bit mantissa; cuDNN allows it by default), whatever the user set
    outside: the screens' bounds and the certificate allow for float32's
    rounding alone (`keras_capacity.screen.INFLATION`)."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def compile(function):  # noqa: A001
    """``function`` at full precision: on PyTorch the projections run
    eagerly, on PyTorch's own FFT and LAPACK kernels (``torch.compile`` is
    not used)."""
    return full_precision()(function)


def compile_eager(function):
    """``function`` at full precision: PyTorch runs it eagerly."""
    return full_precision()(function)


def float64():
    """A context in which arrays may be float64 (always, on PyTorch)."""
    return contextlib.nullcontext()


def inside_compiled_step(x):
    """Whether a train step marked by `install_projection_step` runs
    (``x`` is not needed here)."""
    return getattr(_STEP, "depth", 0) > 0


def strategy_scope_of(variable):
    return contextlib.nullcontext()


def install_projection_step(model, pairs):
    """Wraps ``model.train_step`` (once) so that constraints called during
    it know they run in a train step; see the module docstring."""
    if getattr(model.train_step, "keras_capacity_marked", False):
        return
    original = model.train_step

    def train_step(data):
        _STEP.depth = getattr(_STEP, "depth", 0) + 1
        try:
            return original(data)
        finally:
            _STEP.depth -= 1

    train_step.keras_capacity_marked = True
    model.train_step = train_step
