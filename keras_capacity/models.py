"""The paper's networks as Keras functional models, constraints attached.

Every model takes two four-entry lists, ``lip`` and ``dist``, with the
bounds for (first conv, convs inside blocks, shortcut, classifier); ``-1``,
``None`` or ``inf`` leave that entry unconstrained. Each convolution and
trainable classifier gets its own `LipDist` (an
unconstrained one still records ``K0``, so its distance can be reported);
call `keras_capacity.bind` before training.

The input shape comes from the data (any number of channels; any size for
the ResNet, up to 32x32 for the simple convnets). Where a layer's input map
is smaller than its 3x3 kernel (the deep stages at 32x32 inputs see 2x2 and
1x1 maps) the kernel is 2x2 or 1x1: on a periodic 2x2 grid a 3x3 kernel's
taps fold onto 2x2 positions, so the smaller kernel is the same family of
operators, with the reference's parameter count, and every layer's
Lipschitz constant is that of the operator it applies.

Max-pools are ``keras.layers.MaxPooling2D(3, 2, padding="same")``: windows
start at pixel 0 rather than PyTorch's -1, a one-pixel shift of the same
pooling.
"""

import keras

from keras_capacity import constraint_values
from keras_capacity.constraints import LipDist
from keras_capacity.layers import CircularConv2D, PoolingShortcut, SimplexClassifier

FIRST, INNER, SHORTCUT, CLASSIFIER = range(4)


class _Builder:
    """Creates the constrained layers of one model with shared settings."""

    def __init__(self, lip, dist, mode, n_iter, every):
        self.lip = constraint_values.constraint_list("lip", lip, constraint_values.LIPSCHITZ)
        self.dist = constraint_values.constraint_list("dist", dist, constraint_values.DISTANCE)
        self.mode, self.n_iter, self.every = mode, n_iter, every

    def constraint(self, entry):
        return LipDist(
            self.lip[entry],
            self.dist[entry],
            mode=self.mode,
            n_iter=self.n_iter,
            every=self.every,
        )

    def conv(self, x, filters, entry, name, kernel_size=3, strides=1):
        """A bias-free circular convolution whose kernel fits the input map."""
        size = tuple(min(kernel_size, d) for d in x.shape[1:3])
        layer = CircularConv2D(
            filters,
            size,
            strides=strides,
            use_bias=False,
            kernel_constraint=self.constraint(entry),
            name=name,
        )
        return layer(x)

    def dense(self, x, units, entry, name):
        return keras.layers.Dense(
            units,
            use_bias=False,
            kernel_constraint=self.constraint(entry),
            name=name,
        )(x)

    def simplex_head(self, x, num_classes, name):
        return SimplexClassifier(num_classes, lip=self.lip[CLASSIFIER], name=name)(x)


def _max_pool(x, name):
    return keras.layers.MaxPooling2D(3, 2, padding="same", name=name)(x)


def _check_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")


def _simple_convnet(
    depth,
    num_classes,
    n_channels,
    strides,
    simplex,
    lip,
    dist,
    mode,
    n_iter,
    every,
    input_shape,
    name,
):
    _check_classes(num_classes)
    if len(input_shape) != 3 or max(input_shape[:2]) > 32:
        raise ValueError(
            f"{name} takes images of at most 32x32, (H, W, C) (five halvings down to "
            f"1x1 before its head), got input_shape={tuple(input_shape)}; "
            "preact_resnet18 takes any size."
        )
    build = _Builder(lip, dist, mode, n_iter, every)
    inputs = keras.Input(input_shape)
    x = inputs
    for block in range(1, 6):
        for position in range(1, depth + 1):
            first = position == 1
            entry = FIRST if block == 1 and first else INNER
            x = build.conv(
                x,
                n_channels,
                entry,
                f"block{block}_conv{position}",
                strides=2 if strides and first else 1,
            )
            if first and not strides:
                x = _max_pool(x, f"block{block}_pool")
            x = keras.layers.ReLU(name=f"block{block}_relu{position}")(x)
    if not simplex:
        x = build.conv(x, num_classes, CLASSIFIER, "classifier", kernel_size=1)
        outputs = keras.layers.Flatten(name="flatten")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
        if build.dist[CLASSIFIER] == 0:
            outputs = build.simplex_head(x, num_classes, "classifier")
        else:
            outputs = build.dense(x, num_classes, CLASSIFIER, "classifier")
    return keras.Model(inputs, outputs, name=name)


def simple_convnet6(
    num_classes: int,
    n_channels: int = 512,
    strides: bool = True,
    simplex: bool = False,
    lip=(-1, -1, -1, -1),
    dist=(-1, -1, -1, -1),
    mode: str = "radial",
    n_iter: int = 1,
    every: int = 1,
    input_shape: tuple = (32, 32, 3),
) -> keras.Model:
    """The paper's 6-layer convnet: five blocks of one 3x3 circular conv.

    Each block is a bias-free circular conv with stride 2 (or stride 1 and a
    3x3/2 max-pool when ``strides=False``) and a ReLU; 32x32 inputs shrink
    to 1x1 (smaller ones, 28x28 say, too: every halving rounds up). The
    head is a 1x1 circular conv to the classes and a flatten; with
    ``simplex=True`` it is a flatten and a `SimplexClassifier` when
    ``dist[3] == 0``, else a constrained bias-free ``Dense``.

    The fifth conv sees a 2x2 map, so its kernel is 2x2. Parameters for 10
    classes, as the reference after its first forward pass: 8,145,408 with
    512 channels (with ``simplex=True`` and ``dist[3] == 0`` the same count,
    5,120 of them the fixed simplex); 512,640 with 128 channels.

    Args:
        num_classes: ``K >= 2``.
        n_channels: width of every conv.
        strides: stride-2 convs, or stride-1 convs followed by max-pools.
        simplex: the flatten + simplex/Dense head instead of the 1x1 conv.
        lip, dist: four-entry bounds; the shortcut entry is unused (no
            shortcuts), the first applies to block 1's conv, the second to
            every other conv, the fourth to the head.
        mode, n_iter, every: passed to every `LipDist`.
        input_shape: ``(H, W, channels)``, ``H, W <= 32``.
    """
    return _simple_convnet(
        1,
        num_classes,
        n_channels,
        strides,
        simplex,
        lip,
        dist,
        mode,
        n_iter,
        every,
        input_shape,
        "simple_convnet6",
    )


def simple_convnet11(
    num_classes: int,
    n_channels: int = 512,
    strides: bool = True,
    simplex: bool = False,
    lip=(-1, -1, -1, -1),
    dist=(-1, -1, -1, -1),
    mode: str = "radial",
    n_iter: int = 1,
    every: int = 1,
    input_shape: tuple = (32, 32, 3),
) -> keras.Model:
    """The paper's 11-layer convnet: as `simple_convnet6` with two
    convs per block (the second with stride 1).

    Block 5's convs see 2x2 and 1x1 maps (2x2 and 1x1 kernels). Parameters
    for 10 classes and 512 channels: 16,534,016.
    """
    return _simple_convnet(
        2,
        num_classes,
        n_channels,
        strides,
        simplex,
        lip,
        dist,
        mode,
        n_iter,
        every,
        input_shape,
        "simple_convnet11",
    )


def _preact_block(build, x, planes, downsample, batch_norm, name):
    """A pre-activation basic block; ``downsample`` pools after the first
    conv and takes the pooling shortcut on the activated input."""

    def norm(y, suffix):
        if not batch_norm:
            return y
        return keras.layers.BatchNormalization(name=f"{name}_{suffix}")(y)

    out = keras.layers.ReLU(name=f"{name}_relu1")(norm(x, "bn1"))
    if downsample:
        shortcut = PoolingShortcut(lip=build.lip[SHORTCUT], name=f"{name}_shortcut")(out)
        identity = norm(shortcut, "shortcut_bn")
    else:
        identity = x
    out = build.conv(out, planes, INNER, f"{name}_conv1")
    if downsample:
        out = _max_pool(out, f"{name}_pool")
    out = keras.layers.ReLU(name=f"{name}_relu2")(norm(out, "bn2"))
    out = build.conv(out, planes, INNER, f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([out, identity])


def preact_resnet18(
    num_classes: int,
    lip=(-1, -1, -1, -1),
    dist=(-1, -1, -1, -1),
    batch_norm: bool = False,
    mode: str = "radial",
    n_iter: int = 1,
    every: int = 1,
    input_shape: tuple = (32, 32, 3),
) -> keras.Model:
    """The paper's pre-activation ResNet-18 without strides.

    A 7x7 circular stem conv (64 channels, stride 1), ReLU and two 3x3/2
    max-pools; four stages (64, 128, 256, 512 channels) of two
    pre-activation basic blocks, the first block of stages 2-4 downsampling
    by a 3x3/2 max-pool after its first conv, with a
    `PoolingShortcut` (two shifted 2x2 max-pools, concatenated) on
    the skip path; global average pooling; a `SimplexClassifier`
    when ``dist[3] == 0``, else a constrained bias-free ``Dense``.
    ``batch_norm=True`` adds BatchNorm where the reference does (after the
    stem, before each block's activations, after the shortcut).

    At 32x32 inputs stage 3 ends on 2x2 maps and stage 4 on 1x1 maps, whose
    kernels are 2x2 and 1x1; 64x64 inputs (Tiny-ImageNet) work too.
    Parameters at 32x32 with 10 classes, as the reference: 3,070,144 (with
    the simplex head 5,120 of them fixed); ``batch_norm`` adds 17,408
    (8,704 trainable). At 64x64: 7,067,840.

    Args:
        lip, dist: four-entry bounds for the stem, the block convs, the
            shortcut (its ``lip`` scales the fixed ``sqrt(2)`` map down;
            it has no weights, so no distance) and the classifier.
    """
    _check_classes(num_classes)
    build = _Builder(lip, dist, mode, n_iter, every)
    inputs = keras.Input(input_shape)
    x = build.conv(inputs, 64, FIRST, "conv1", kernel_size=7)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = _max_pool(_max_pool(x, "pool1"), "pool2")
    for stage, planes in enumerate((64, 128, 256, 512), start=1):
        for block in (1, 2):
            downsample = stage > 1 and block == 1
            x = _preact_block(
                build, x, planes, downsample, batch_norm, f"stage{stage}_block{block}"
            )
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    if build.dist[CLASSIFIER] == 0:
        outputs = build.simplex_head(x, num_classes, "classifier")
    else:
        outputs = build.dense(x, num_classes, CLASSIFIER, "classifier")
    return keras.Model(inputs, outputs, name="preact_resnet18")


ARCHITECTURES = {
    "simple_convnet6": simple_convnet6,
    "simple_convnet11": simple_convnet11,
    "preact_resnet18": preact_resnet18,
}
