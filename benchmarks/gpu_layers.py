"""On an accelerator, through JAX: does the ResNet's train-step projection
keep its guarantee there, where does its time go, and what do the pieces
an accelerator path could be built from cost (no TensorFlow).

    KERAS_BACKEND=jax python benchmarks/gpu_layers.py [--batch 256] [--steps 45]

1. *Matrix products' precision.* The relative error of a float32
   product of two 512x512 matrices against float64 numpy, at JAX's default
   precision and as the package compiles its projections
   (`keras_capacity.backend.full_precision`): the screen's carried bounds
   are inflated by `keras_capacity.screen.INFLATION` (1e-5) for float32
   rounding, which a TF32 product (about 1e-3) would exceed.
2. *The guarantee.* ``preact_resnet18`` at the reference's settings,
   orthogonal (lip 2.0,0.8,1.4,1.0, dist 90 on all four, one round, a
   projection every 15 steps), trained ``--steps`` steps on random
   CIFAR-shaped data (45: the last step projects); then every constrained
   layer's exact norm in float64 numpy
   (`keras_capacity.exact_norms.spectral_norm`) against its ``lip``, and
   the largest ratio.
3. *Per layer.* Each screened layer's projection
   (`keras_capacity.orthogonal.project_screened`, compiled as the package
   compiles it) from its
   real state (*warm*: the kernel of the last step, which projected) and
   from unknown bounds (*cold*: every block decomposed); medians of 10
   calls, and the share of blocks the warm one decomposes.
4. *Primitives*, at the ResNet's block sizes and counts: a batched
   Hermitian eigendecomposition (complex64), eigenvalues alone, the
   largest eigenvalue by tridiagonal reduction and bisection (what the
   exact norms use on JAX's CPU, `keras_capacity.backend.jax.largest_eigenvalue`),
   a Cholesky factorization, and a batched matrix product.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np
from keras import ops
from paper_resnet import compiled_resnet  # benchmarks/, the script's folder
from projection_case import decomposed_share

import keras_capacity as kc
from keras_capacity import backend, exact_norms, orthogonal
from keras_capacity.backend.jax import largest_by_bisection

REFERENCE = dict(
    lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90), n_iter=1, every=15, mode="orthogonal"
)
# (channels, blocks): a 64-channel layer on 32x32 (one block per frequency
# of a half grid), then the ResNet's stages, 64 on 8x8 to 512 on 1x1.
BLOCKS = ((64, 32 * 17), (64, 8 * 5), (128, 4 * 3), (256, 2 * 2), (512, 1))


def median_ms(function, *args, repeats=10):
    """Median milliseconds of ``function(*args)`` to its results, after a
    call that compiles it."""
    jax.block_until_ready(function(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def product_precision():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 512, 512))
    exact = a @ b
    product = jax.jit(lambda a, b: a @ b)
    full = backend.compile(lambda a, b: a @ b)
    errors = [
        np.linalg.norm(
            np.asarray(f(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), np.float64)
            - exact
        )
        / np.linalg.norm(exact)
        for f in (product, full)
    ]
    print(
        "float32 512x512 product, relative error against float64: "
        f"{errors[0]:.1e} at JAX's default precision, "
        f"{errors[1]:.1e} as this package compiles it (`keras_capacity.backend.full_precision`)"
    )


def guarantee(model):
    worst = 0.0
    for layer, constraint in kc.binding.constrained_layers(model):
        norm = exact_norms.spectral_norm(ops.convert_to_numpy(layer.kernel), constraint.geometry)
        worst = max(worst, norm / constraint.lip)
    print(f"largest exact norm / lip over the constrained layers after the last step: {worst:.6f}")


def compiled_projection(geometry, screen, lip, dist, compiled={}):  # noqa: B006 (the cache)
    """``(kernel, k0, state) -> (kernel, state)`` compiled once per layer
    shape and bounds (the ResNet's 17 screened layers share a few), so that
    the script fits a lent machine's minutes."""
    key = (geometry, screen.kernel_shape, type(screen), lip, dist)
    if key not in compiled:
        compiled[key] = backend.compile(
            lambda kernel, k0, state: orthogonal.project_screened(
                kernel, k0, lip, dist, screen, state
            )
        )
    return compiled[key]


def layer_table(model):
    print(f"{'layer':22s} {'kernel':20s} {'grid':8s} share   warm ms   cold ms")
    totals = [0.0, 0.0]
    for layer, constraint in kc.binding.constrained_layers(model):
        screen = constraint.screen
        if screen is None:
            print(f"{layer.name:22s} not screened")
            continue
        kernel = jnp.asarray(ops.convert_to_numpy(layer.kernel))
        k0 = np.asarray(ops.convert_to_numpy(constraint.initial_kernel))
        state = tuple(jnp.asarray(ops.convert_to_numpy(v)) for v in constraint.projection_state)
        cold_state = tuple(jnp.asarray(x) for x in screen.start(k0))
        lip, dist = constraint.lip, constraint.dist
        project = compiled_projection(constraint.geometry, screen, lip, dist)
        k0 = jnp.asarray(k0)
        warm, cold = (median_ms(project, kernel, k0, s) for s in (state, cold_state))
        share = decomposed_share(screen, state, kernel, k0, lip, dist)
        totals[0] += warm
        totals[1] += cold
        print(
            f"{layer.name:22s} {str(tuple(kernel.shape)):20s} "
            f"{'x'.join(map(str, constraint.geometry.input_size)):8s} {share:5.2f} "
            f"{warm:9.2f} {cold:9.2f}"
        )
    print(f"total ms: warm {totals[0]:.1f}, cold {totals[1]:.1f}")


def primitives():
    rng = np.random.default_rng(0)
    print(f"{'n':>4s} {'blocks':>6s}   eigh ms  eigvalsh ms  bisection ms  cholesky ms  product ms")
    for n, count in BLOCKS:
        x = rng.standard_normal((count, 2 * n, n)) + 1j * rng.standard_normal((count, 2 * n, n))
        gram = jnp.asarray(np.conj(np.swapaxes(x, 1, 2)) @ x, jnp.complex64)
        shifted = gram + 4 * n * jnp.eye(n, dtype=gram.dtype)
        times = [
            median_ms(jax.jit(function), argument)
            for function, argument in (
                (jnp.linalg.eigh, gram),
                (jnp.linalg.eigvalsh, gram),
                (jax.vmap(largest_by_bisection), gram),
                (jnp.linalg.cholesky, shifted),
                (lambda g: g @ g, gram),
            )
        ]
        print(f"{n:4d} {count:6d} " + " ".join(f"{t:12.2f}" for t in times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=45)
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.platform} {getattr(device, 'device_kind', '')}; jax {jax.__version__}")
    product_precision()
    model = compiled_resnet(**REFERENCE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch * args.steps, 32, 32, 3)).astype("float32")
    model.fit(x, rng.integers(0, 10, len(x)), batch_size=args.batch, epochs=1, verbose=0)
    guarantee(model)
    layer_table(model)
    primitives()


if __name__ == "__main__":
    main()
