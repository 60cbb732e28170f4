import numpy as np
import torch

from facekd.data.transforms import AugmentCfg, eval_transform, train_transform


def test_eval_transform_normalises_like_the_reference_recipe():
    img = np.zeros((112, 96, 3), np.uint8)
    img[0, 0] = [255, 127, 0]
    x = eval_transform(127.5, 128.0)(img)
    assert x.shape == (3, 112, 96) and x.dtype == torch.float32
    # (x - 127.5) / 128 by hand
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([127.5 / 128, -0.5 / 128, -127.5 / 128]))
    torch.testing.assert_close(x[:, 1, 1], torch.full((3,), -127.5 / 128))


def test_train_transform_flips_half_the_time():
    img = np.zeros((112, 96, 3), np.uint8)
    img[:, :48] = 255  # left half white
    t = train_transform(cfg=AugmentCfg(affine_p=0.0, color_p=0.0, gray_p=0.0))
    np.random.seed(0)
    import random

    random.seed(0)
    lefts = [float(t(img)[0, :, :48].mean()) for _ in range(200)]
    flipped = sum(v < 0 for v in lefts)
    assert 70 < flipped < 130  # p = 0.5
