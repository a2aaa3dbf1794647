"""Stands in for the model you already have: trains torchvision's resnet18 on digits_rgb for two
epochs (about 89% accuracy, half a minute on a 2-core CPU) and saves its state_dict as
resnet18.pt."""

import torch
import torchvision
from digits_rgb import load
from torch.utils.data import DataLoader

torch.manual_seed(0)
train, val, num_classes, _ = load()
model = torchvision.models.resnet18(num_classes=num_classes)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
for _ in range(2):
    model.train()
    for x, y in DataLoader(train, batch_size=64, shuffle=True):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
model.eval()
with torch.no_grad():
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(val, 128))
print(f"resnet18 accuracy {correct / len(val):.1%}; saved resnet18.pt")
torch.save(model.state_dict(), "resnet18.pt")
