"""Generated shapes to segment, and a tiny encoder-decoder: stand-ins for your data and network.

Each sample is a dict ``{"image": 3xHxW float tensor, "mask": HxW long tensor}``: background 0,
a square 1, a disc 2, drawn on noise with a colour cue per class.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

NUM_CLASSES = 3


class Shapes(Dataset):
    def __init__(self, n: int, *, seed: int, size: int = 32) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = 0.3 * torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        for i in range(n):
            side = int(torch.randint(size // 5, size // 3, (), generator=generator))
            top, left = torch.randint(0, size - side, (2,), generator=generator).tolist()
            self.masks[i, top : top + side, left : left + side] = 1
            radius = size // 6
            cy, cx = torch.randint(radius, size - radius, (2,), generator=generator).tolist()
            self.masks[i][(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = 2
        for label, channel in ((1, 0), (2, 2)):
            self.images[:, channel] += (self.masks == label).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index], "mask": self.masks[index]}


class TinySegNet(nn.Module):
    """Encoder (two convs, one strided), decoder (upsample + conv), 1x1 classifier."""

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.decoder(self.encoder(x)))
