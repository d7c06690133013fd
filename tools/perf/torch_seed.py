#!/usr/bin/env python3
"""The seed recipe in PyTorch, as the lab runs it, for timing against cfx.

The seed lab's pipeline: CIFAR-10 from the binary files, torchvision
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize on PIL
images, DataLoader(batch 64, shuffle), the seed CNN, Adam(lr 1e-3). Run with
Debian's python3-torch and python3-torchvision:

    /usr/bin/python3 tools/perf/torch_seed.py --data data/cifar10 --epochs 2 --threads 2

Prints one line per epoch: epoch, train loss, images/s, seconds (training
only, validation excluded as in cfx's images/s).
"""
import argparse
import os
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
import torchvision.transforms as T
from PIL import Image

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class Cifar10Binary(Dataset):
    """CIFAR-10 records (label byte + 3072 pixel bytes) as PIL images."""

    def __init__(self, files, transform):
        raw = np.concatenate([np.fromfile(f, dtype=np.uint8) for f in files])
        raw = raw.reshape(-1, 3073)
        self.labels = raw[:, 0].astype(np.int64)
        self.images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def seed_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 10))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=45000, help="training images per epoch")
    ap.add_argument("--warmup-batches", type=int, default=20)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(MEAN, STD)])
    files = [os.path.join(args.data, f"data_batch_{i}.bin") for i in range(1, 6)]
    data = Cifar10Binary(files, transform)
    train = torch.utils.data.Subset(data, range(min(args.limit, len(data))))
    loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=0)
    model = seed_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for i, (x, y) in enumerate(loader):  # warm-up
        if i == args.warmup_batches:
            break
        step(x, y)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for epoch in range(1, args.epochs + 1):
        t0, total, n = time.perf_counter(), 0.0, 0
        for x, y in loader:
            total += step(x, y) * len(y)
            n += len(y)
        dt = time.perf_counter() - t0
        print(f"epoch {epoch} train_loss {total / n:.4f} images_per_second {n / dt:.1f} "
              f"seconds {dt:.2f}", flush=True)


if __name__ == "__main__":
    main()
