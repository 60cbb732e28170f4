"""Normalisation of pixels into a network's input, and the augmentation every loader uses."""

import numpy as np
import torch

from facekd.data.gpu_augment import augment_batch
from facekd.data.transforms import AugmentCfg
from facekd.preprocessing import Preprocessing, normalize_pixels, to_input


def test_normalisation_is_the_reference_recipe_for_arrays_and_tensors():
    img = np.zeros((1, 112, 96, 3), np.uint8)
    img[0, 0, 0] = [255, 127, 0]
    x = to_input(img, Preprocessing(mean=127.5, std=128.0))
    assert x.shape == (1, 3, 112, 96) and x.dtype == np.float32
    # (x - 127.5) / 128 by hand
    np.testing.assert_allclose(x[0, :, 0, 0], [127.5 / 128, -0.5 / 128, -127.5 / 128])
    np.testing.assert_allclose(x[0, :, 1, 1], np.full(3, -127.5 / 128))
    t = normalize_pixels(torch.from_numpy(img).permute(0, 3, 1, 2).float(), 127.5, 128.0)
    np.testing.assert_allclose(t.numpy(), x)


def test_augmentation_flips_half_the_time():
    img = np.zeros((200, 3, 112, 96), np.uint8)
    img[:, :, :, :48] = 255  # left half white
    cfg = AugmentCfg(affine_p=0.0, color_p=0.0, gray_p=0.0)
    out = augment_batch(torch.from_numpy(img), cfg, torch.Generator().manual_seed(0))
    flipped = int((out[:, 0, :, :48].mean(dim=(1, 2)) < 128).sum())
    assert 70 < flipped < 130  # p = 0.5
