"""SGD and LARS with PyTorch's coupled weight decay, against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from keras_capacity.training import optimizers


def run(optimizer, w0, gradients):
    w = tf.Variable(w0)
    for g in gradients:
        optimizer.apply([tf.constant(g)], [w])
    return w.numpy()


def test_sgd_matches_pytorch_coupled_weight_decay():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(5).astype(np.float32)
    grads = [rng.standard_normal(5).astype(np.float32) for _ in range(4)]
    lr, m, wd = 0.1, 0.9, 0.01
    w, buf = w0.astype(np.float64), np.zeros(5)
    for i, g in enumerate(grads):  # torch.optim.SGD's step
        d = g + wd * w
        buf = d if i == 0 else m * buf + d
        w = w - lr * buf
    result = run(optimizers.SGD(lr, momentum=m, l2=wd), w0, grads)
    np.testing.assert_allclose(result, w, rtol=1e-5)


def test_lars_matches_its_formula():
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    grads = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    lr, m, wd, eta = 0.5, 0.9, 1e-3, 0.01
    w, v = w0.astype(np.float64), np.zeros((3, 4))
    for g in grads:
        ratio = eta * np.linalg.norm(w) / (np.linalg.norm(g) + wd * np.linalg.norm(w) + 1e-8)
        v = m * v + ratio * (g + wd * w)
        w = w - lr * v
    result = run(optimizers.LARS(lr, momentum=m, l2=wd, eta=eta), w0, grads)
    np.testing.assert_allclose(result, w, rtol=1e-5)


def test_create_and_bad_names():
    assert isinstance(optimizers.create("lars", 0.1, 0.9, 1e-4), optimizers.LARS)
    assert optimizers.create("sgd", 0.1, 0.9, 1e-4).l2 == 1e-4
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'"):
        optimizers.create("rmsprop", 0.1)
    config = optimizers.LARS(0.2, l2=0.1).get_config()
    assert optimizers.LARS.from_config(config).l2 == 0.1
