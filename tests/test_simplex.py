"""SimplexClassifier: closed-form simplex geometry and Lipschitz constant."""

import keras
import numpy as np
import pytest

import keras_capacity as kc


@pytest.mark.parametrize("num_classes,dim", [(2, 1), (3, 5), (10, 9), (10, 64), (100, 128)])
def test_weights_are_a_centred_regular_simplex(num_classes, dim):
    head = kc.SimplexClassifier(num_classes)
    head.build((None, dim))
    w = head.kernel.numpy().astype(np.float64)
    assert w.shape == (dim, num_classes)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, atol=1e-6)
    gram = w.T @ w
    off = gram[~np.eye(num_classes, dtype=bool)]
    np.testing.assert_allclose(off, -1.0 / (num_classes - 1), atol=1e-6)
    np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-6)
    svd = np.linalg.svd(w, compute_uv=False)[0]
    np.testing.assert_allclose(svd, np.sqrt(num_classes / (num_classes - 1)), rtol=1e-6)
    assert kc.lipschitz(head) == pytest.approx(svd, rel=1e-12)
    assert kc.distance(head) == 0.0


def test_lip_scales_down_only():
    small = kc.SimplexClassifier(10, lip=0.5)
    small.build((None, 16))
    assert kc.lipschitz(small) == pytest.approx(0.5, rel=1e-6)
    large = kc.SimplexClassifier(10, lip=5.0)
    large.build((None, 16))
    assert kc.lipschitz(large) == pytest.approx(np.sqrt(10 / 9), rel=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        kc.SimplexClassifier(1)
    with pytest.raises(ValueError, match="lip"):
        kc.SimplexClassifier(3, lip=-1.0)
    with pytest.raises(ValueError, match="at least num_classes - 1 = 9"):
        kc.SimplexClassifier(10).build((None, 8))


def test_fixed_during_training_and_saved(tmp_path):
    head = kc.SimplexClassifier(4, lip=0.9)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(6), head])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = head.kernel.numpy()
    model.fit(np.random.randn(16, 6), np.random.randint(0, 4, 16), verbose=0)
    np.testing.assert_array_equal(head.kernel.numpy(), before)
    assert head.trainable_weights == []
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    restored = loaded.layers[-1]
    assert isinstance(restored, kc.SimplexClassifier)
    assert restored.get_config() == head.get_config()
    np.testing.assert_array_equal(restored.kernel.numpy(), before)
