"""A small offline stand-in for your own image data: scikit-learn's bundled 8x8 digits as 3x32x32
colour images (each digit upsampled 4x, on a random tint per image, seeded), split 1400 / 397.

autocompress calls ``load(root=..., seed=...)`` for ``data.dataset: "digits_rgb:load"``; it
returns ``(train_dataset, val_dataset, num_classes, input_shape)``.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def load(root=None, seed=0):
    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(digits.images / 16.0).float()
    images = images.repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)
    tint = torch.from_numpy(rng.uniform(0.3, 1.0, size=(len(images), 3, 1, 1))).float()
    images = (images.unsqueeze(1) * tint - 0.3) / 0.3
    labels = torch.from_numpy(digits.target).long()
    order = torch.from_numpy(rng.permutation(len(images)))
    train, val = order[:1400], order[1400:]
    return (
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[val], labels[val]),
        10,
        (3, 32, 32),
    )
