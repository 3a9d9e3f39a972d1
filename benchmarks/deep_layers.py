"""Per layer, what the ResNet's train-step orthogonal projection costs, and
what its two deep-layer savings are worth, measured in one run.

    python benchmarks/deep_layers.py [--steps 44] [--rounds 9]

``preact_resnet18`` at the reference's settings (lip 2.0,0.8,1.4,1.0, dist
90, one round, a projection every 15 steps) is trained ``--steps`` steps on
random CIFAR-shaped data (44: projections at 15 and 30, then 14 more steps,
as just before the next one). Then every screened layer's projection
(`keras_capacity.orthogonal.project_screened`) is compiled from the
layer's real state in three variants, which take turns for ``--rounds``
calls each:

* *as shipped*: Gram matrices by the cheaper route
  (`keras_capacity.fourier.LatticePairs.uses_spectra`), blocks of 256
  channels or more certified before they are decomposed
  (`keras_capacity.certificates`);
* *pairs*: every Gram matrix from the tap pairs, as before the spectra's
  route;
* *no certificate*: every block the screen passes decomposed.

Printed per layer: its shape and grid, the share of blocks the screen
passes on, whether they were certified inside the ball (the bounds the
shipped projection returns are then ``lip``, not the blocks' norms), the
median milliseconds of each variant, and the totals with their ratios.
"""

import argparse
import copy
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from paper_resnet import compiled_resnet  # benchmarks/, the script's folder
from projection_case import decomposed_share

import keras_capacity as kc
from keras_capacity import orthogonal

REFERENCE = dict(
    lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90), n_iter=1, every=15, mode="orthogonal"
)
VARIANTS = ("as shipped", "pairs", "no certificate")


def variant(block_screen, name):
    """A copy of the layer's screen that works as ``name`` says."""
    changed = copy.copy(block_screen)
    if name == "pairs":
        changed.pairs = copy.copy(block_screen.pairs)
        changed.pairs.uses_spectra = lambda index=None: False
    elif name == "no certificate":
        changed.certifies_clipping = changed.certifies_norm = False
    return changed


def layer_projections(constraint, state):
    """``{variant: compiled projection}`` from the constraint's ``state``."""
    k0 = constraint.initial_kernel

    def compiled(block_screen):
        return tf.function(
            lambda kernel: orthogonal.project_screened(
                kernel, k0, constraint.lip, constraint.dist, block_screen, state
            )
        )

    return {name: compiled(variant(constraint.screen, name)) for name in VARIANTS}


def timed(function, kernel):
    start = time.perf_counter()
    [x.numpy() for x in tf.nest.flatten(function(kernel))]
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=44)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    model = compiled_resnet(**REFERENCE)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64 * args.steps, 32, 32, 3)).astype("float32")
    model.fit(x, rng.integers(0, 10, len(x)), batch_size=64, epochs=1, verbose=0)
    totals = {name: 0.0 for name in VARIANTS}
    print(f"{'layer':22s} {'kernel':20s} {'grid':8s} share certified " + "  ".join(VARIANTS))
    for layer, constraint in kc.binding.constrained_layers(model):
        if constraint.screen is None:
            continue
        kernel = tf.constant(layer.kernel.numpy())
        state = tuple(tf.constant(v.numpy()) for v in constraint.projection_state)
        projections = layer_projections(constraint, state)
        for function in projections.values():  # tracing
            timed(function, kernel)
        times = {name: [] for name in VARIANTS}
        for turn in range(args.rounds):
            order = VARIANTS if turn % 2 == 0 else VARIANTS[::-1]
            for name in order:
                times[name].append(timed(projections[name], kernel))
        share = decomposed_share(
            constraint.screen,
            state,
            kernel,
            constraint.initial_kernel,
            constraint.lip,
            constraint.dist,
        )
        # Certified blocks get lip as their bound, decomposed ones their norm.
        bounds = {name: projections[name](kernel)[1][1].numpy() for name in VARIANTS}
        certified = not np.array_equal(bounds["as shipped"], bounds["no certificate"])
        medians = {name: 1000 * float(np.median(t)) for name, t in times.items()}
        for name in VARIANTS:
            totals[name] += medians[name]
        print(
            f"{layer.name:22s} {str(tuple(layer.kernel.shape)):20s} "
            f"{'x'.join(map(str, constraint.geometry.input_size)):8s} {share:5.2f} "
            f"{'yes' if certified else '-':9s} "
            + "  ".join(f"{medians[name]:7.1f}" for name in VARIANTS)
        )
    shipped = totals["as shipped"]
    print(
        "total ms: "
        + ", ".join(f"{name} {totals[name]:.0f}" for name in VARIANTS)
        + "; to as shipped: "
        + ", ".join(f"{name} {totals[name] / shipped:.2f}" for name in VARIANTS[1:])
    )


if __name__ == "__main__":
    main()
