"""Affine distortions: identity is exact, ranges and coin rates as the paper says, per-image transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from siamax import augment as A


@pytest.mark.parametrize("size", [105, 28])
def test_identity_is_exact(size):
    x = jax.random.uniform(jax.random.key(0), (3, size, size))
    np.testing.assert_array_equal(np.asarray(A.apply_affine(x, A.identity(3))), np.asarray(x))


def test_sampled_params_in_range_and_half_active():
    p = np.asarray(A.sample_affine(jax.random.key(0), 8000))
    lo = np.array([-10, -0.3, -0.3, 0.8, 0.8, -2, -2])
    hi = -lo
    hi[3:5] = 1.2
    assert (p >= lo).all() and (p <= hi).all()
    active = p != np.asarray(A.IDENTITY)
    for cols in ([0], [1, 2], [3, 4], [5, 6]):
        assert abs(active[:, cols[0]].mean() - 0.5) < 0.03
        assert (active[:, cols].all(1) == active[:, cols].any(1)).all()  # x and y share the coin
    assert abs(np.corrcoef(active[:, 0], active[:, 3])[0, 1]) < 0.05  # components independent


def test_translation_and_rotation_geometry():
    img = jnp.zeros((1, 105, 105)).at[0, 50, 50].set(1.0)
    out = A.apply_affine(img, jnp.array([[0, 0, 0, 1, 1, 2.0, -1.0]]))
    assert np.argwhere(np.asarray(out[0]) > 0.5).tolist() == [[49, 52]]  # +2 px in x, -1 px in y
    x = jax.random.uniform(jax.random.key(1), (1, 29, 29))
    rot = A.apply_affine(x, jnp.array([[90.0, 0, 0, 1, 1, 0, 0]]))
    assert min(np.abs(np.asarray(rot[0]) - np.rot90(np.asarray(x[0]), k)).max() for k in (1, 3)) < 1e-4
    small = A.apply_affine(jnp.zeros((1, 35, 35)).at[0, 17, 17].set(1.0), jnp.array([[0, 0, 0, 1, 1, 3.0, 0]]))
    assert np.argwhere(np.asarray(small[0]) > 0.5).tolist() == [[17, 18]]  # 3 px at 105 = 1 px at 35


def test_distort_per_image_and_zero_fill():
    x = jnp.ones((64, 28, 28))
    out = np.asarray(jax.jit(A.distort)(jax.random.key(0), x))
    assert out.shape == (64, 28, 28) and out.min() >= 0 and out.max() <= 1 + 1e-6
    assert len({o.tobytes() for o in out}) > 50  # each image its own transform
    assert (out[:, 0, 0] < 1).any()  # background (0) flows in at the borders


def test_expand_pairs_nine_x():
    pairs = (np.arange(5), np.arange(5) + 10, np.array([1, 0, 1, 0, 1]))
    aug = A.expand_pairs(pairs, copies=8, seed=0)
    assert len(aug.i1) == 45 and aug.t1.shape == aug.t2.shape == (45, 7)
    np.testing.assert_array_equal(aug.i2[5:10], pairs[1])
    np.testing.assert_array_equal(aug.t1[:5], np.tile(A.IDENTITY, (5, 1)))
    assert not np.array_equal(aug.t1[5:], aug.t2[5:])
    again = A.expand_pairs(pairs, copies=8, seed=0)
    np.testing.assert_array_equal(aug.t1, again.t1)
    assert not np.array_equal(A.expand_pairs(pairs, copies=8, seed=1).t1, aug.t1)


# ---------------------------------------------------------------------------------------------
# Photo augmentations.


def _photos(b=4, s=16, c=3, seed=0):
    return jax.random.uniform(jax.random.key(seed), (b, s, s, c))


def test_photo_ops_keep_shapes_and_range():
    x = _photos()
    key = jax.random.key(1)
    for images in (x, x[..., 0]):  # the spectrogram ops take (B, M, T) here, (B, M, T, 1) below
        ops = {name: op for name, op in A.OPS.items() if images.ndim == 3 or name not in A.SETS["audio"]}
        for name, y in jax.jit(lambda k, im, ops=ops: {n: op(k, im) for n, op in ops.items()})(key, images).items():
            assert y.shape == images.shape and y.dtype == jnp.float32, name
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 + 1e-6, name
    y = A.augment(key, x, "photo")
    assert y.shape == x.shape and not np.allclose(y, x)
    np.testing.assert_array_equal(A.augment(key, x, "photo"), y)  # keyed: the same key, the same draw
    assert not np.allclose(A.augment(jax.random.key(2), x, "photo"), y)
    np.testing.assert_array_equal(A.augment(key, x, "none"), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.augment(key, x, "crop,blur")


def test_photo_ops_identities():
    x, key = _photos(), jax.random.key(3)
    np.testing.assert_array_equal(A.horizontal_flip(key, x, p=1.0), x[:, :, ::-1])
    np.testing.assert_array_equal(A.horizontal_flip(key, x, p=0.0), x)
    whole = A.random_resized_crop(key, x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(whole, x, atol=1e-5)  # the whole frame resampled onto itself
    still = A.color_jitter(key, x, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    np.testing.assert_allclose(still, x, atol=1e-6)
    gray = jnp.repeat(x[..., :1], 3, axis=-1)  # no chroma: saturation and hue leave gray alone
    np.testing.assert_allclose(A.color_jitter(key, gray, 0.0, 0.0, 0.5, 0.5), gray, atol=1e-5)
    # brightness scales every channel of an image by one factor
    y = A.color_jitter(key, x * 0.5, brightness=0.3, contrast=0.0, saturation=0.0)
    ratio = np.asarray(y / (x * 0.5))
    assert np.allclose(ratio, ratio[:, :1, :1, :1], atol=1e-4) and not np.allclose(ratio, 1.0)


def test_spectrogram_ops():
    """Time shift moves whole frames and fills silence; gain moves only the cells above the floor;
    the masks silence one band of frames and one of mel bands; all keyed, none touching a silent clip."""
    key = jax.random.key(5)
    x = jnp.zeros((6, 12, 20)).at[:, 2:10, 5:15].set(jax.random.uniform(key, (6, 8, 10), minval=0.1, maxval=0.9))
    y = A.time_shift(key, x, fraction=0.2)
    for a, b in zip(np.asarray(x), np.asarray(y)):
        shifts = [s for s in range(-4, 5) if np.array_equal(np.roll(a, s, axis=1), b)]
        assert len(shifts) == 1  # the frames moved whole, zeros shifted in (the clip sits inside the frame)
    np.testing.assert_array_equal(A.time_shift(key, x, fraction=0.0), x)
    g = np.asarray(A.gain(key, x, gain_db=8.0))
    assert ((g > 0) == (np.asarray(x) > 0)).all()  # the floor stays the floor
    step = (g - np.asarray(x))[np.asarray(x) > 0].reshape(6, -1)
    assert np.allclose(step, step[:, :1], atol=1e-6) and np.abs(step).max() <= 8.0 / 80 + 1e-6
    m = np.asarray(A.spec_mask(key, x, time=0.3, freq=0.3))
    assert ((m == 0) | (m == np.asarray(x))).all() and (m == 0).sum() >= (np.asarray(x) == 0).sum()
    for op in (A.time_shift, A.gain, A.spec_mask):
        np.testing.assert_array_equal(op(key, jnp.zeros((2, 12, 20))), 0.0)
        # the model's 1-channel images, as the train step passes them: the same draw, the shape kept
        np.testing.assert_array_equal(op(key, x[..., None]), op(key, x)[..., None])
    with pytest.raises(AssertionError):
        A.gain(key, jnp.zeros((2, 12, 20, 3)))
    assert A.op_names("audio") == ("shift", "gain", "mask")
    with pytest.raises(Exception, match="1-channel"):
        from siamax import config

        config.Config.from_flat({"model": "small", "channels": 3, "augment_ops": "audio"})


def test_affine_on_colour_warps_every_channel_alike():
    """The paper's affine path, unchanged for gray; RGB: each channel by its image's transform."""
    x = _photos()
    t = A.sample_affine(jax.random.key(4), 4)
    rgb = A.apply_affine(x, t)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], A.apply_affine(x[..., c], t))
