"""Writes keras_capacity/training/datasets/shapes10.npz, the bundled offline dataset.

    python scripts/make_shapes10.py

Ten classes of coloured shapes on 32x32 RGB images (uint8): filled disc,
filled square, triangle, plus, ring, horizontal bars, vertical bars,
diagonal line, X, checkerboard patch. Position, size, colours and the
background gradient are random (seeded), so the task needs real features
but a small network learns it in minutes on a CPU. The file is committed;
this script documents how it was made.
"""

import os

import numpy as np

SIZE = 32
CLASSES = (
    "disc",
    "square",
    "triangle",
    "plus",
    "ring",
    "hbars",
    "vbars",
    "diagonal",
    "x",
    "checker",
)


def shape_mask(kind, rng):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    radius = rng.uniform(5, 11)
    cy, cx = rng.uniform(radius, SIZE - radius, size=2)
    dy, dx = (yy - cy) / radius, (xx - cx) / radius
    box = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    width = rng.uniform(0.2, 0.4)
    if kind == "disc":
        return dy**2 + dx**2 <= 1
    if kind == "square":
        return box
    if kind == "triangle":
        return box & (np.abs(dx) <= (dy + 1) / 2)
    if kind == "plus":
        return box & ((np.abs(dx) <= width) | (np.abs(dy) <= width))
    if kind == "ring":
        r = np.sqrt(dy**2 + dx**2)
        return (r <= 1) & (r >= 1 - 1.5 * width)
    if kind == "hbars":
        return box & (np.floor((dy + 1) * 2.5) % 2 == 0)
    if kind == "vbars":
        return box & (np.floor((dx + 1) * 2.5) % 2 == 0)
    if kind == "diagonal":
        return box & (np.abs(dx - dy) <= width * 1.4)
    if kind == "x":
        return box & ((np.abs(dx - dy) <= width) | (np.abs(dx + dy) <= width))
    return box & ((np.floor((dx + 1) * 2) + np.floor((dy + 1) * 2)) % 2 == 0)


def image(label, rng):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    start, end = rng.uniform(0, 0.5, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2.5
    background = start + (end - start) * t[..., None]
    colour = rng.uniform(0.45, 1.0, size=3)
    mask = shape_mask(CLASSES[label], rng)[..., None]
    picture = np.where(mask, colour, background)
    return np.round(255 * np.clip(picture, 0, 1)).astype(np.uint8)


def make(count, rng):
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    images = np.stack([image(label, rng) for label in labels])
    return images, labels.astype(np.uint8)


def main():
    rng = np.random.default_rng(20221128)
    x_train, y_train = make(5000, rng)
    x_test, y_test = make(1000, rng)
    path = os.path.join(
        os.path.dirname(__file__), "..", "keras_capacity", "training", "datasets", "shapes10.npz"
    )
    np.savez_compressed(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        class_names=np.array(CLASSES),
    )
    print(f"wrote {os.path.normpath(path)}: {os.path.getsize(path) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
