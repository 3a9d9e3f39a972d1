"""The seam between the numerical core and the Keras backend.

The core (operators, Fourier code, projections, estimators) is written in
``keras.ops`` wherever an op maps one to one. What ``keras.ops`` lacks lives
in one small module per backend, with the same functions:

* complex numbers: `complex`, `matmul` (``keras.ops.matmul``
  turns complex128 into complex64), the 2-D FFTs (`fft2`,
  `ifft2`, `rfft2`, `irfft2`) over the last two axes;
* batched Hermitian (complex) eigendecompositions: `eigh`,
  `eigvalsh`, `largest_eigenvalue` (where a backend finds the largest
  alone faster);
* `stateless_normal`, random numbers from a seed tensor (replicas agree);
* `assert_finite`, a run-time check that ends training with a message;
  `eager_value`, a variable's value while a compiled step is traced;
* `linear_adjoint`, the adjoint of a linear map by reverse-mode
  differentiation; `compile`, a compiled function; `compile_eager`, a
  function called outside the train step, compiled where that pays;
* the trainer and distribution specifics: `inside_compiled_step`,
  `strategy_scope_of` (the distribution scope a variable lives in),
  `float64` (a context where float64 arrays stay float64),
  `full_precision` (a context where float32 products are not rounded
  through TensorFloat-32, as accelerators otherwise may),
  `PROJECTS_IN_MODEL_STEP` and `install_projection_step`
  (where a constraint can read its state during ``fit``).

``keras_capacity.backend.tensorflow``, ``keras_capacity.backend.jax`` and
``keras_capacity.backend.torch`` implement them; the module matching
``keras.backend.backend()`` is the one imported here.
"""

import importlib

import keras

_BACKEND = keras.backend.backend()
SUPPORTED = ("tensorflow", "jax", "torch")

if _BACKEND not in SUPPORTED:
    raise ImportError(
        f"keras_capacity supports the Keras backends {SUPPORTED}; found KERAS_BACKEND={_BACKEND!r}."
    )

_module = importlib.import_module(f"keras_capacity.backend.{_BACKEND}")

complex = _module.complex
complex_dtype = _module.complex_dtype
matmul = _module.matmul
fft2 = _module.fft2
ifft2 = _module.ifft2
rfft2 = _module.rfft2
irfft2 = _module.irfft2
eigh = _module.eigh
eigvalsh = _module.eigvalsh
largest_eigenvalue = _module.largest_eigenvalue
stateless_normal = _module.stateless_normal
assert_finite = _module.assert_finite
eager_value = _module.eager_value
linear_adjoint = _module.linear_adjoint
compile = _module.compile
compile_eager = _module.compile_eager
float64 = _module.float64
full_precision = _module.full_precision
inside_compiled_step = _module.inside_compiled_step
strategy_scope_of = _module.strategy_scope_of
PROJECTS_IN_MODEL_STEP = _module.PROJECTS_IN_MODEL_STEP
install_projection_step = _module.install_projection_step
