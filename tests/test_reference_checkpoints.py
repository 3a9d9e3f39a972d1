"""``from_reference``: the reference's checkpoints as bound Keras models.

The oracle is a small PyTorch re-implementation of the reference's networks
(Graf et al.'s ``models/simple_convnet.py`` and
``models/nostride_preact_resnet.py``): periodic padding with the extra tap
of an even kernel before the input, kernels cropped to 2x2 or summed to 1x1
at the first forward pass and recorded as ``init_weight``, PyTorch's
max-pools and BatchNorm, the pooling shortcut, the simplex or linear head.
Its state_dicts keep the reference's key names; ``torch.save`` writes them
as ``train.py`` does (``model_0.pt`` after the first forward pass, then the
perturbed "trained" ``model_5.pt``).
"""

import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import keras_capacity as kc
from keras_capacity import binding, torch_state_dict

torch.manual_seed(0)


# ------------------------------------------------------------------ oracle


class RefConv(nn.Module):
    """The reference's ConstrainedConv2d without constraints."""

    def __init__(self, cin, cout, k, stride=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / np.sqrt(cin * k * k))
        self.stride = stride

    def forward(self, x):
        if not hasattr(self, "init_weight"):
            if x.shape[-1] == 1:
                self.weight.data = self.weight.data.sum([2, 3], keepdim=True)
            elif x.shape[-1] == 2:
                self.weight.data = self.weight.data[:, :, :2, :2]
            self.register_buffer("init_weight", self.weight.data.clone())
        k = self.weight.shape[-1]
        before, after = k // 2, k // 2 - (k % 2 == 0)
        x = F.pad(x, (before, after, before, after), mode="circular")
        return F.conv2d(x, self.weight, stride=self.stride)


class RefLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / np.sqrt(cin))

    def forward(self, x):
        if not hasattr(self, "init_weight"):
            self.register_buffer("init_weight", self.weight.data.clone())
        return x @ self.weight.T


class RefSimplex(nn.Module):
    """Unit simplex prototypes in a random orientation (the reference's
    are optimized numerically), fixed, without init_weight."""

    def __init__(self, cin, classes):
        super().__init__()
        centred = np.eye(classes) - 1.0 / classes
        basis = np.linalg.svd(centred)[0][:, : classes - 1]  # orthonormal, sums to 0
        rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(cin, classes - 1)))[0]
        prototypes = (rotation @ (basis.T @ centred)).T
        prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
        self.weight = nn.Parameter(torch.tensor(prototypes, dtype=torch.float32))
        self.weight.requires_grad = False

    def forward(self, x):
        return x @ self.weight.T


class RefConvnet(nn.Module):
    def __init__(self, depth, classes, channels, strides=True, head="conv"):
        super().__init__()
        self.pool = nn.Identity() if strides else nn.MaxPool2d(3, 2, 1)
        blocks = []
        for block in range(5):
            layers = [RefConv(3 if block == 0 else channels, channels, 3, 2 if strides else 1)]
            layers += [self.pool, nn.ReLU()]
            for _ in range(depth - 1):
                layers += [RefConv(channels, channels, 3), nn.ReLU()]
            blocks.append(nn.Sequential(*layers))
        if head == "conv":
            self.cls = nn.Sequential(RefConv(channels, classes, 1), nn.Flatten())
        elif head == "simplex":
            self.cls = nn.Sequential(nn.Flatten(), RefSimplex(channels, classes))
        else:
            self.cls = nn.Sequential(nn.Flatten(), RefLinear(channels, classes))
        self.model = nn.Sequential(*blocks, self.cls)

    def forward(self, x):
        return self.model(x)


class RefPoolingShortcut(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2, padding=1)

    def forward(self, x):
        if x.shape[-1] == 1:
            return torch.cat((x, x), 1)
        h, w = x.shape[2] // 2, x.shape[3] // 2
        return torch.cat((self.pool1(x), self.pool2(x)[:, :, :h, :w]), 1)


class RefBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, norm):
        super().__init__()
        self.conv1 = RefConv(inplanes, planes, 3)
        self.pool = nn.MaxPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.bn1 = norm(inplanes)
        self.act = nn.ReLU()
        self.conv2 = RefConv(planes, planes, 3)
        self.bn2 = norm(planes)
        self.downsample = nn.Sequential(RefPoolingShortcut(), norm(planes)) if stride > 1 else None

    def forward(self, x):
        out = self.act(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(out)
        out = self.act(self.bn2(self.pool(self.conv1(out))))
        return self.conv2(out) + identity


class RefResNet(nn.Module):
    def __init__(self, classes, batch_norm, simplex):
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        self.conv1 = RefConv(3, 64, 7)
        self.bn1 = norm(64)
        self.act = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, planes in enumerate((64, 128, 256, 512), start=1):
            stride = 1 if stage == 1 else 2
            blocks = [RefBlock(inplanes, planes, stride, norm), RefBlock(planes, planes, 1, norm)]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = RefSimplex(512, classes) if simplex else RefLinear(512, classes)

    def forward(self, x):
        x = self.maxpool(self.maxpool(self.act(self.bn1(self.conv1(x)))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def save_run(net, directory, size=32):
    """``model_0.pt`` after the first forward pass, the weights perturbed
    as by training, ``model_5.pt``; returns the paths and state_dicts."""
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    first, last = os.path.join(directory, "model_0.pt"), os.path.join(directory, "model_5.pt")
    torch.save(net.state_dict(), first)
    initial = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for parameter in net.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * parameter.std() * torch.randn_like(parameter))
    torch.save(net.state_dict(), last)
    trained = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    return first, last, initial, trained


def logits(net, model, size=32, batch=3):
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        expected = net(x).numpy()
    ours = np.asarray(model(x.permute(0, 2, 3, 1).numpy(), training=False))
    return ours, expected


def assert_same_logits(ours, expected):
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * scale)


def oracle_distances(initial, trained):
    """``{prefix: ||W - W0||_{2,1}}`` (norm over the input axis, 1, then
    the sum), float64, for every kernel the reference records K0 of."""
    return {
        key[: -len(".init_weight")]: float(
            np.linalg.norm(
                trained[key.replace("init_weight", "weight")].astype(np.float64)
                - initial[key.replace("init_weight", "weight")].astype(np.float64),
                axis=1,
            ).sum()
        )
        for key in trained
        if key.endswith(".init_weight")
    }


def our_name(prefix):
    """Our layer name for a reference key prefix (the test's own map)."""
    parts = prefix.split(".")
    if parts[0] == "model":
        block, index = int(parts[1]), int(parts[2])
        if block == 5:
            return "classifier"
        return f"block{block + 1}_conv{1 if index == 0 else 2}"
    if parts[0] in ("fc", "cls"):
        return "classifier"
    if parts[0] == "conv1":
        return "conv1"
    stage, block, conv = parts[0][len("layer") :], int(parts[1]) + 1, parts[2]
    return f"stage{stage}_block{block}_{conv}"


def assert_distances(model, initial, trained):
    expected = oracle_distances(initial, trained)
    assert expected
    for prefix, value in expected.items():
        assert value > 0
        ours = kc.distance(model.get_layer(our_name(prefix)))
        np.testing.assert_allclose(ours, value, rtol=1e-6, err_msg=prefix)


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "arch, depth, strides, head, dist, with_init",
    [
        ("simple_convnet6", 1, True, "conv", (-1, -1, -1, -1), True),
        ("simple_convnet11", 2, False, "simplex", (-1, -1, -1, 0), False),
        ("simple_convnet6", 1, False, "linear", (-1, 5.0, -1, 3.0), True),
    ],
)
def test_convnets_compute_the_reference_logits_and_distances(
    tmp_path, arch, depth, strides, head, dist, with_init
):
    net = RefConvnet(depth, classes=5, channels=6, strides=strides, head=head)
    first, last, initial, trained = save_run(net, tmp_path)
    model = kc.from_reference(
        last, arch, init=first if with_init else None, strides=strides, dist=dist
    )
    ours, expected = logits(net, model)
    assert_same_logits(ours, expected)
    assert_distances(model, initial, trained)
    if head == "simplex":
        assert isinstance(model.get_layer("classifier"), kc.SimplexClassifier)
        assert kc.distance(model.get_layer("classifier")) == 0.0


def test_preact_resnet18_computes_the_reference_logits_and_distances(tmp_path):
    """BatchNorm (running statistics and affine), the pooling shortcut,
    2x2 and 1x1 kernels in the deep stages, the simplex head; the
    reference's --arch name."""
    net = RefResNet(classes=4, batch_norm=True, simplex=True)
    first, last, initial, trained = save_run(net, tmp_path)
    model = kc.from_reference(last, "no_stride_preactresnet18", init=first, dist=(-1, -1, -1, 0))
    ours, expected = logits(net, model, batch=2)
    assert_same_logits(ours, expected)
    assert_distances(model, initial, trained)
    assert model.get_layer("stage3_block2_conv1").kernel.shape == (2, 2, 256, 256)
    assert model.get_layer("stage4_block2_conv2").kernel.shape == (1, 1, 512, 512)


@pytest.mark.parametrize("size", [1, 2, 5, 8])
def test_padded_max_pooling_is_pytorchs_with_its_lipschitz_constant(size):
    pool = kc.layers.PaddedMaxPooling2D(3, 2, 1)
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = F.max_pool2d(torch.tensor(x).permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(pool(x)), expected.numpy())
    # A pixel raised from 0 to 1 raises every window holding it from 0 to 1.
    most = 0
    for i in range(size):
        for j in range(size):
            pixel = np.zeros((1, size, size, 1), np.float32)
            pixel[0, i, j] = 1.0
            most = max(most, float(np.sum(np.asarray(pool(pixel)))))
    assert pool.lipschitz_constant == pytest.approx(np.sqrt(most))
    config = pool.get_config()
    assert kc.layers.PaddedMaxPooling2D.from_config(config).get_config() == config


def test_loaded_state_dict_unbound_model_and_init_model(tmp_path):
    """A state_dict in memory (torch tensors) works like the file;
    ``bind=False`` gives the network without LipDist, and the init
    checkpoint that way is the reference's initial network."""
    net = RefConvnet(1, classes=3, channels=4)
    first, last, initial, _ = save_run(net, tmp_path)
    bound = kc.from_reference(net.state_dict(), "simple_convnet6")
    unbound = kc.from_reference(last, "simple_convnet6", bind=False)
    assert binding.constrained_layers(unbound) == []
    ours, expected = logits(net, unbound)
    assert_same_logits(ours, expected)
    init_model = kc.from_reference(first, "simple_convnet6", bind=False)
    for layer in bound.layers:
        if hasattr(layer, "kernel"):
            k0 = np.asarray(layer.kernel_constraint.initial_kernel)
            np.testing.assert_array_equal(k0, np.asarray(init_model.get_layer(layer.name).kernel))


def test_k0_above_lip_is_kept_and_reported(tmp_path):
    net = RefConvnet(1, classes=3, channels=4)
    _, last, initial, trained = save_run(net, tmp_path)
    with pytest.warns(UserWarning, match="K0 has Lipschitz constant"):
        model = kc.from_reference(last, "simple_convnet6", lip=(0.01, 0.01, -1, 0.01))
    assert_distances(model, initial, trained)


# ------------------------------------------------------------ reading files


def test_reader_matches_torch_load_for_dtypes_and_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    tensors = {
        "float32": torch.randn(2, 3, 4),
        "float64": torch.randn(5, dtype=torch.float64),
        "float16": torch.randn(3, dtype=torch.float16),
        "int64": torch.tensor(7),  # 0-dim, like num_batches_tracked
        "int32": torch.arange(4, dtype=torch.int32),
        "uint8": torch.arange(3, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "transposed": base.t(),
        "offset_slice": base[1:, 2:5],
        "strided": base[::2, ::3],
        "shared": base,  # the same storage as the views above
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "tensors.pt"
    torch.save(tensors, path)
    loaded = torch_state_dict.load_torch_state_dict(path)
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.numpy().dtype, name
        np.testing.assert_array_equal(loaded[name], tensor.numpy(), err_msg=name)


def test_reader_refuses_other_objects_without_running_them(tmp_path):
    target = tmp_path / "created_by_the_pickle"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(target),))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"w": Payload()}, protocol=2))
        archive.writestr("evil/byteorder", "little")
    with pytest.raises(ValueError, match=r"refers to posix\.mkdir.*refused, nothing was run"):
        torch_state_dict.load_torch_state_dict(path)
    assert not target.exists()


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        kc.from_reference(tmp_path / "missing.pt", "simple_convnet6")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a torch.save zip archive"):
        kc.from_reference(garbage, "simple_convnet6")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="PyTorch < 1.6"):
        kc.from_reference(legacy, "simple_convnet6")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-2000])
    with pytest.raises(ValueError, match="truncated.pt"):
        kc.from_reference(truncated, "simple_convnet6")
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "w": torch.ones(1)}, wrapped)
    with pytest.raises(ValueError, match="entry 'epoch' is of type int, not a tensor"):
        kc.from_reference(wrapped, "simple_convnet6")


# ------------------------------------------------------- checkpoint errors


@pytest.fixture(scope="module")
def convnet_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    net = RefConvnet(1, classes=3, channels=4)
    first, last, initial, trained = save_run(net, directory)
    return first, trained


def test_checkpoint_errors(convnet_run):
    first, trained = convnet_run
    with pytest.raises(ValueError, match="Unknown arch 'resnet50'"):
        kc.from_reference(trained, "resnet50")
    with pytest.raises(ValueError, match="no 'conv1.weight'.*is `arch` right"):
        kc.from_reference(trained, "preact_resnet18")
    missing = {k: v for k, v in trained.items() if k != "model.2.0.weight"}
    with pytest.raises(ValueError, match="no 'model.2.0.weight'"):
        kc.from_reference(missing, "simple_convnet6")
    extra = {**trained, "model.0.0.bias": np.zeros(4, np.float32)}
    with pytest.raises(ValueError, match="1 key.*simple_convnet6 does not: model.0.0.bias"):
        kc.from_reference(extra, "simple_convnet6")
    wrong = {**trained, "model.1.0.weight": np.zeros((4, 5, 3, 3), np.float32)}
    with pytest.raises(
        ValueError,
        match=r"'model.1.0.weight' has shape \(4, 5, 3, 3\) in the checkpoint, but layer "
        r"'block2_conv1' needs \(4, 4, 3, 3\)",
    ):
        kc.from_reference(wrong, "simple_convnet6")
    with pytest.raises(ValueError, match="num_classes=10, but the checkpoint's 'model.5.0.weight'"):
        kc.from_reference(trained, "simple_convnet6", num_classes=10)
    with pytest.raises(ValueError, match="no 'model.0.3.weight'"):
        kc.from_reference(trained, "simple_convnet11")
    uncropped = {**trained, "model.4.0.weight": np.zeros((4, 4, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"needs \(4, 4, 2, 2\) \(deep kernels .* input_shape\)"):
        kc.from_reference(uncropped, "simple_convnet6", bind=False)


def test_k0_errors(convnet_run, tmp_path):
    first, trained = convnet_run
    no_k0 = {k: v for k, v in trained.items() if not k.endswith("init_weight")}
    with pytest.raises(ValueError, match="distance to initialization is unknown"):
        kc.from_reference(no_k0, "simple_convnet6")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        kc.from_reference(no_k0, "simple_convnet6", init=first)  # K0 from init
    other = RefConvnet(1, classes=3, channels=4)
    other_first, *_ = save_run(other, tmp_path)
    with pytest.raises(ValueError, match="`init` is not this run's initialization"):
        kc.from_reference(trained, "simple_convnet6", init=other_first)
    with pytest.raises(ValueError, match="with bind=False leave it out"):
        kc.from_reference(trained, "simple_convnet6", init=first, bind=False)


def test_head_errors(tmp_path):
    net = RefConvnet(1, classes=3, channels=4, head="simplex")
    _, last, *_ = save_run(net, tmp_path)
    with pytest.raises(ValueError, match="fixed simplex classifier.*pass dist\\[3\\]=0"):
        kc.from_reference(last, "simple_convnet6")
    with pytest.raises(ValueError, match="spectral norm .* pass the run's --lip"):
        kc.from_reference(last, "simple_convnet6", lip=(-1, -1, -1, 0.5), dist=(-1, -1, -1, 0))
    linear = RefConvnet(1, classes=3, channels=4, head="linear")
    _, last, *_ = save_run(linear, tmp_path)
    with pytest.raises(ValueError, match="is trainable.*pass the run's --dist"):
        kc.from_reference(last, "simple_convnet6", dist=(-1, -1, -1, 0))
