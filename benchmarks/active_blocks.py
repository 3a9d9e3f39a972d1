"""Which frequency blocks a projection has to touch, over a real run.

    python benchmarks/active_blocks.py [--model resnet|convnet6] [--mode orthogonal]
                                       [--epochs 2] [--images 5000]

A circular convolution is block diagonal in the Fourier basis: one block
``X(g)`` per output frequency (its ``S = s_h s_w`` aliases stacked, divided
by ``sqrt(S)``), and ``Lip = max_g sigma_max(X(g))``. Projecting onto
``{Lip <= lip}`` changes only the blocks whose largest singular value
exceeds ``lip``, and in them only the singular values above it. This
script trains ``preact_resnet18`` or ``simple_convnet6`` (64 channels) on
the bundled shapes10 images with the reference's settings (lip
2.0,0.8,1.4,1.0, dist 90 on all four entries, SGD 0.003 with momentum 0.9,
batch 64 for the ResNet and 128 for the convnet, a projection every 15
steps) and, just before every projection, measures per layer in float64
numpy (an FFT of the kernel on its input grid and an SVD of every block,
independent of the library's Fourier code):

* the fraction of blocks with ``sigma_max > lip`` (the *active* blocks);
* how many singular values of an active block exceed ``lip`` (mean, max);
* the fraction that a certified screen carried from the last projection
  would still have to decompose: Weyl's inequality gives
  ``sigma_max(X_now(g)) <= sigma_max(X_last(g)) + ||X_now(g) - X_last(g)||_F``,
  and the right side costs one FFT of the kernel's change (the ``screen``
  column: blocks it cannot certify to lie inside the ball);
* the fraction that stateless screens from the block's Gram matrix
  ``G = X^H X`` would have to decompose: ``tr(G^m)^(1/2m) >= sigma_max``
  for ``m = 1, 2, 4`` (the trace of ``G``, its Frobenius norm, that of its
  square: columns ``gram1``, ``gram2``, ``gram4``).

The projection itself is the library's exact one (``kc.project``), called
every 15 steps from a callback; the in-graph projection is switched off
(``every`` beyond the run's length), so the trajectory is that of a run
projecting every 15 steps. Results: the mean over the run's projections,
per layer, and the first and last projection's model-wide fractions.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import keras_capacity as kc
from keras_capacity import fourier, models, operators
from keras_capacity.training import data

REFERENCE = dict(lip=(2.0, 0.8, 1.4, 1.0), dist=(90, 90, 90, 90), n_iter=1)
PROJECTION_PERIOD = 15
NEVER = 10**9
GRAM_POWERS = (1, 2, 4)


def blocks(kernel, geometry):
    """Every Fourier block ``X(g)`` of the layer's operator, ``(blocks, rows,
    cols)`` complex128; a Dense kernel is its own single block."""
    kernel = np.asarray(kernel, np.float64)
    if geometry.kind == operators.DENSE:
        return kernel[None].astype(np.complex128)
    (height, width), (s_h, s_w) = geometry.input_size, geometry.strides
    rows, cols = fourier.tap_positions(geometry, kernel.shape)
    grid = np.zeros((height, width, *kernel.shape[2:]))
    for a, row in enumerate(rows):
        for b, col in enumerate(cols):
            grid[row, col] += kernel[a, b]
    spectrum = np.fft.fft2(grid, axes=(0, 1))  # (H, W, in, out)
    out_h, out_w = height // s_h, width // s_w
    spectrum = spectrum.reshape(s_h, out_h, s_w, out_w, *kernel.shape[2:])
    folded = spectrum.transpose(1, 3, 0, 2, 4, 5).reshape(
        out_h * out_w, s_h * s_w * kernel.shape[2], kernel.shape[3]
    )
    return folded / np.sqrt(s_h * s_w)


def singular_values(kernel, geometry):
    return np.linalg.svd(blocks(kernel, geometry), compute_uv=False)


class BlockCensus(keras.callbacks.Callback):
    """Every ``PROJECTION_PERIOD`` steps: measures the blocks, then projects."""

    def __init__(self, pairs):
        super().__init__()
        self.pairs = pairs
        self.step = 0
        self.last = {}  # layer name -> (projected kernel, its sigma_max per block)
        self.records = []  # one dict per projection: layer -> (active, counts, screen)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % PROJECTION_PERIOD:
            return
        record = {}
        for layer, constraint in self.pairs:
            kernel = np.asarray(layer.kernel.numpy(), np.float64)
            sigma = singular_values(kernel, constraint.geometry)
            above = (sigma > constraint.lip).sum(axis=1)
            active = above > 0
            screen = None
            if layer.name in self.last:
                previous, previous_top = self.last[layer.name]
                change = blocks(kernel - previous, constraint.geometry)
                bound = previous_top + np.sqrt((np.abs(change) ** 2).sum(axis=(1, 2)))
                screen = float((bound > constraint.lip).mean())
            grams = tuple(
                float(((sigma ** (2 * m)).sum(axis=1) ** (1 / (2 * m)) > constraint.lip).mean())
                for m in GRAM_POWERS
            )
            record[layer.name] = (float(active.mean()), above[active], screen, grams)
        self.records.append(record)
        kc.project(self.model)
        for layer, constraint in self.pairs:
            kernel = np.asarray(layer.kernel.numpy(), np.float64)
            top = singular_values(kernel, constraint.geometry)[:, 0]
            self.last[layer.name] = (kernel, top)


def build(name, mode):
    keras.utils.set_random_seed(0)
    settings = {**REFERENCE, "mode": mode, "every": NEVER}
    if name == "resnet":
        model, batch = models.preact_resnet18(10, **settings), 64
    else:
        model, batch = models.simple_convnet6(10, n_channels=64, **settings), 128
    kc.bind(model)
    model.compile(
        keras.optimizers.SGD(0.003, momentum=0.9),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, batch


def summarize(census, pairs):
    print(f"{len(census.records)} projections")
    print(
        f"{'layer':32s} {'blocks':>6s} {'lip':>5s} {'active':>7s} "
        f"{'above (mean/max)':>16s} {'screen':>7s} {'gram1':>6s} {'gram2':>6s} {'gram4':>6s}"
    )
    for layer, constraint in pairs:
        rows = [r[layer.name] for r in census.records]
        counts = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0)
        screens = [r[2] for r in rows if r[2] is not None]
        n_blocks = blocks(layer.kernel.numpy(), constraint.geometry).shape[0]
        above = f"{counts.mean():.1f}/{counts.max()}" if counts.size else "-"
        screen = f"{np.mean(screens):7.3f}" if screens else "      -"
        print(
            f"{layer.name:32s} {n_blocks:6d} {constraint.lip:5.2f} "
            f"{np.mean([r[0] for r in rows]):7.3f} {above:>16s} {screen} "
            + " ".join(f"{np.mean([r[3][i] for r in rows]):6.3f}" for i in range(len(GRAM_POWERS)))
        )

    def model_wide(record):
        total = active = screened = 0
        for layer, constraint in pairs:
            n = blocks(layer.kernel.numpy(), constraint.geometry).shape[0]
            fraction, _, screen, _ = record[layer.name]
            total += n
            active += fraction * n
            screened += (screen if screen is not None else 1.0) * n
        return active / total, screened / total

    for label, record in (("first", census.records[0]), ("last", census.records[-1])):
        active, screened = model_wide(record)
        print(
            f"{label} projection, all blocks: active {active:.3f}, "
            f"screen must decompose {screened:.3f}"
        )
    fractions = np.array([model_wide(r) for r in census.records[1:]])
    print(
        f"projections 2..{len(census.records)}: active {fractions[:, 0].mean():.3f} "
        f"(range {fractions[:, 0].min():.3f}-{fractions[:, 0].max():.3f}), screen "
        f"{fractions[:, 1].mean():.3f} (range {fractions[:, 1].min():.3f}-"
        f"{fractions[:, 1].max():.3f})"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet", "convnet6"), default="resnet")
    parser.add_argument("--mode", choices=("orthogonal", "radial"), default="orthogonal")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    model, batch = build(args.model, args.mode)
    pairs = [(layer, c) for layer, c in kc.binding.constrained_layers(model) if c.has_lipschitz]
    census = BlockCensus(pairs)
    train = data.load("shapes10", batch_size=batch, limit_to=args.images).train
    model.fit(train, epochs=args.epochs, callbacks=[census], verbose=0)
    print(f"{args.model}, mode={args.mode}, {args.epochs} epochs of {args.images} images")
    summarize(census, pairs)


if __name__ == "__main__":
    main()
